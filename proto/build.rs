//! Generates tonic clients and servers for every versioned proto package in this crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["mesh/demo/v1/demo.proto", "mesh/demo/v1/echo.proto", "mesh/identity/v1/identity.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().build_client(true).build_server(true).compile_protos(&protos, &["."])?;
    Ok(())
}
