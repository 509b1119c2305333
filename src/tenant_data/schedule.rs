//! Transactions run side by side where their references allow: each waits only for the
//! transactions it depends on (`order::dependencies`), with at most `concurrency` in flight.
//! HAPI spends seconds on a transaction of a few hundred entries, mostly on one thread, so two
//! or four at once shorten a restore or purge. On a failure no new transaction starts, those in
//! flight finish (and are recorded), then the first error is returned.
use super::DataError;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeSet;
use std::future::Future;

/// Runs every transaction not in `done` (by index), calling `committed` after each success.
pub async fn run<Send, Fut>(
    deps: &[Vec<usize>],
    done: &mut BTreeSet<usize>,
    concurrency: usize,
    send: Send,
    mut committed: impl FnMut(usize, &BTreeSet<usize>) -> Result<(), DataError>,
) -> Result<(), DataError>
where
    Send: Fn(usize) -> Fut,
    Fut: Future<Output = Result<usize, DataError>>,
{
    let mut started: BTreeSet<usize> = done.clone();
    let mut running = FuturesUnordered::new();
    let mut failed: Option<DataError> = None;
    loop {
        if failed.is_none() {
            for (i, needs) in deps.iter().enumerate() {
                if running.len() >= concurrency.max(1) {
                    break;
                }
                if !started.contains(&i) && needs.iter().all(|d| done.contains(d)) {
                    started.insert(i);
                    running.push(send(i));
                }
            }
        }
        match running.next().await {
            None => break,
            Some(Ok(i)) => {
                done.insert(i);
                if let Err(e) = committed(i, done) {
                    failed.get_or_insert(e);
                }
            }
            Some(Err(e)) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None if done.len() < deps.len() => {
            Err(DataError::Refused("the transactions' dependencies form a cycle; nothing more was sent".into()))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[tokio::test]
    async fn a_transaction_starts_only_after_those_it_depends_on() {
        // 0 ← 1, 0 ← 2, {1, 2} ← 3; 1 is already done.
        let deps = vec![vec![], vec![0], vec![0], vec![1, 2]];
        let mut done: BTreeSet<usize> = [1].into();
        let order = RefCell::new(Vec::new());
        run(
            &deps,
            &mut done,
            4,
            |i| {
                order.borrow_mut().push(i);
                async move { Ok(i) }
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
        assert_eq!(*order.borrow(), vec![0, 2, 3], "1 was done before; 2 waits for 0; 3 for 1 and 2");
        assert_eq!(done.len(), 4);
    }

    #[tokio::test]
    async fn after_a_failure_nothing_new_starts() {
        let deps = vec![vec![], vec![0], vec![]];
        let mut done = BTreeSet::new();
        let sent = RefCell::new(Vec::new());
        let r = run(
            &deps,
            &mut done,
            1,
            |i| {
                sent.borrow_mut().push(i);
                async move {
                    if i == 0 {
                        Err(DataError::Refused("no".into()))
                    } else {
                        Ok(i)
                    }
                }
            },
            |_, _| Ok(()),
        )
        .await;
        assert!(matches!(r, Err(DataError::Refused(_))));
        assert_eq!(*sent.borrow(), vec![0]);
        assert!(done.is_empty());
    }
}
