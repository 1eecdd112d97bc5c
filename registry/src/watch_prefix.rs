//! A live copy of the raw values under a prefix, for configuration the proxy follows (policies).
//!
//! Same guarantees as discovery views, fewer features: list, then watch from the next revision;
//! on any watch end or error, re-list (with backoff) and replace; while etcd is unreachable, keep
//! the last known values. Decoding is the caller's: a value it cannot use is the caller's to skip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;

use mesh_common::backoff::Backoff;

/// Keys to raw values.
pub type Values = Arc<BTreeMap<String, Entry>>;

/// One key's value, and the etcd revision that wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The key's `mod_revision`.
    pub revision: i64,
    /// The raw value.
    pub value: Vec<u8>,
}

impl Entry {
    fn of(kv: &etcd_client::KeyValue) -> Self {
        Self { revision: kv.mod_revision(), value: kv.value().to_vec() }
    }
}

/// Watches `prefix`; the receiver always holds the last known values (empty until the first
/// list). The task ends when every receiver is dropped.
pub fn watch_prefix(client: Client, prefix: String) -> watch::Receiver<Values> {
    let (tx, rx) = watch::channel(Values::default());
    tokio::spawn(run(client, prefix, tx));
    rx
}

async fn run(mut client: Client, prefix: String, tx: watch::Sender<Values>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !tx.is_closed() {
        match follow(&mut client, &prefix, &tx, &mut backoff).await {
            Ok(()) => {}
            Err(error) => tracing::debug!(%prefix, %error, "config watch interrupted; keeping the last known values"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One list-then-watch round, until the watch ends.
async fn follow(
    client: &mut Client,
    prefix: &str,
    tx: &watch::Sender<Values>,
    backoff: &mut Backoff,
) -> Result<(), etcd_client::Error> {
    let listed = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut values: BTreeMap<String, Entry> =
        listed.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), Entry::of(kv))).collect();
    tx.send_if_modified(|current| replace_if_changed(current, &values));
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = client.watch(prefix, Some(options)).await?;
    backoff.reset();
    while let Some(resp) = stream.message().await? {
        if resp.compact_revision() > 0 || resp.canceled() {
            return Ok(());
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match event.event_type() {
                EventType::Put => values.insert(key, Entry::of(kv)),
                EventType::Delete => values.remove(&key),
            };
        }
        tx.send_if_modified(|current| replace_if_changed(current, &values));
    }
    Ok(())
}

fn replace_if_changed(current: &mut Values, next: &BTreeMap<String, Entry>) -> bool {
    if current.as_ref() == next {
        return false;
    }
    *current = Arc::new(next.clone());
    true
}
