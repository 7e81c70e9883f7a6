//! Group commit: writes that arrive while others are running share the next transaction,
//! so a burst of requests pays for one `BEGIN` and one `COMMIT` between them (on SQLite also
//! one turn of the write lock; on PostgreSQL two round trips and a commit fewer per write)
//! instead of one each. Every caller still gets its own answer, and only after the commit
//! that holds its writes: a 201 still means committed.
//!
//! One task per database takes the queued writes (up to [`MAX_GROUP`]) and runs them one
//! after another in one transaction. A write that fails rolls the whole group back; each
//! write of that group then runs again alone, in a transaction of its own, so one bad
//! request fails by itself and the others commit as if nothing had happened. That is why a
//! write may run twice and must have no effect outside its transaction.
//!
//! One task on PostgreSQL too, although its server could run several groups side by side:
//! measured, two tasks were no faster (each write is a few round trips; the server's CPU is
//! the limit), and two groups taking the same rows in opposite orders would deadlock, which
//! PostgreSQL resolves by failing one after `deadlock_timeout` (a second).
//!
//! An idle database pays nothing: a write that finds the queue empty runs at once, alone.
//!
//! [`Batched`] goes one step further for writes of one kind: the items of the writes that
//! queued meanwhile go to one call of a function taking them all, so a burst of requests
//! that each insert a row becomes one statement (each statement is a round trip, and on
//! SQLite a hand-off to sqlx's worker thread and back) instead of one per request.

use std::{future::Future, ops::Deref, sync::Arc};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::db::{Db, DbError, Tx};

/// Most writes sharing one transaction: enough to absorb a burst, few enough that the
/// first of them does not wait long for the last.
pub const MAX_GROUP: usize = 64;

/// A write's work in a given transaction, its result kept aside.
type Run = Box<dyn for<'t> FnMut(&'t mut Tx) -> BoxFuture<'t, Result<(), DbError>> + Send>;

/// A write, type-erased: `run` does its work in the transaction it is given (keeping its
/// result aside), `done` answers the caller once the outcome is known.
pub(crate) struct Job {
    run: Run,
    done: Box<dyn FnOnce(Result<(), DbError>) + Send>,
}

impl Job {
    /// A job for `work`, and where its answer will arrive.
    pub(crate) fn new<T, F>(work: F) -> (Job, oneshot::Receiver<Result<T, DbError>>)
    where
        T: Send + 'static,
        F: for<'t> Fn(&'t mut Tx) -> BoxFuture<'t, Result<T, DbError>> + Send + Sync + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let result: Arc<std::sync::Mutex<Option<T>>> = Arc::default();
        let kept = result.clone();
        let work = Arc::new(work);
        // The writer task runs the work, but in the caller's trace: what it emits names the
        // caller's span as parent, as when the caller ran it itself.
        let trace = crate::trace::current();
        let run = Box::new(for_any_tx(move |tx| {
            let (work, kept) = (work.clone(), kept.clone());
            Box::pin(async move {
                let value = match trace {
                    Some(ctx) => crate::trace::within(ctx, work(tx)).await?,
                    None => work(tx).await?,
                };
                *kept.lock().expect("not poisoned") = Some(value);
                Ok(())
            })
        }));
        let done = Box::new(move |outcome: Result<(), DbError>| {
            let answer_value = outcome.and_then(|()| {
                result.lock().expect("not poisoned").take().ok_or_else(|| lost("the write's result was not kept"))
            });
            // The caller may have gone (its request was dropped); its writes stand.
            let _ = answer.send(answer_value);
        });
        (Job { run, done }, answered)
    }
}

/// Gives a closure the signature `Job::run` needs (for every transaction's lifetime), which
/// closure inference alone does not.
fn for_any_tx<F>(f: F) -> F
where
    F: for<'t> FnMut(&'t mut Tx) -> BoxFuture<'t, Result<(), DbError>>,
{
    f
}

fn lost(why: &str) -> DbError {
    DbError::Sql(sqlx::Error::Protocol(format!("group commit: {why}")))
}

/// The queue of one database's writer task.
#[derive(Clone)]
pub(crate) struct Writer(mpsc::UnboundedSender<Job>);

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Starts the writer task for `db`, which must not itself submit to a writer (else
    /// the task would keep its own queue open forever).
    pub(crate) fn start(db: Db) -> Writer {
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(run(db, jobs));
        Writer(queue)
    }

    pub(crate) async fn submit<T: Send + 'static>(
        &self,
        job: Job,
        answered: oneshot::Receiver<Result<T, DbError>>,
    ) -> Result<T, DbError> {
        self.0.send(job).map_err(|_| lost("the database's writer has stopped"))?;
        answered.await.map_err(|_| lost("the database's writer stopped before answering"))?
    }
}

/// The writer task: takes what is queued, runs it as one group, answers, repeats. Ends
/// when every handle to the queue is gone.
async fn run(db: Db, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        run_group(&db, gather(first, &mut jobs)).await;
    }
}

/// `first` and what else is queued, up to [`MAX_GROUP`].
fn gather<T>(first: T, queue: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(next) => group.push(next),
            Err(_) => break,
        }
    }
    group
}

async fn run_group(db: &Db, mut group: Vec<Job>) {
    if group.len() > 1 {
        match together(db, &mut group).await {
            Ok(()) => {
                for job in group {
                    (job.done)(Ok(()));
                }
                return;
            }
            Err(e) => tracing::debug!(writes = group.len(), error = %e, "a grouped write failed; running each alone"),
        }
    }
    for mut job in group {
        let outcome = alone(db, &mut job).await;
        (job.done)(outcome);
    }
}

/// Every job in one transaction; all or nothing.
async fn together(db: &Db, group: &mut [Job]) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    for job in group.iter_mut() {
        guarded(job, &mut tx).await?;
    }
    tx.commit().await
}

async fn alone(db: &Db, job: &mut Job) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    guarded(job, &mut tx).await?;
    tx.commit().await
}

/// Runs a job; a panic is that write's failure, not the writer task's end (which would
/// stop every later write of the process).
async fn guarded(job: &mut Job, tx: &mut Tx) -> Result<(), DbError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe((job.run)(tx)).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => Err(lost("the write panicked (its transaction was rolled back)")),
    }
}

/// Where a caller's answer goes.
type Answer<O> = oneshot::Sender<Result<O, DbError>>;

/// One caller's item of a [`Batched`] write, with the trace of the caller's work.
#[derive(Debug)]
pub struct Item<I> {
    value: I,
    trace: Option<crate::trace::TraceContext>,
}

impl<I> Deref for Item<I> {
    type Target = I;
    fn deref(&self) -> &I {
        &self.value
    }
}

impl<I> Item<I> {
    /// Runs `work` in this item's caller's trace: an event emitted in it names the caller's
    /// span as parent, as when the caller wrote alone.
    pub async fn traced<F: Future>(&self, work: F) -> F::Output {
        crate::trace::continuing(self.trace, work).await
    }
}

/// Writes the items of one call in the transaction given, in order, answering one output
/// per item. Like any write it may run more than once (see the module), so it must have no
/// effect outside its transaction.
pub type WriteAll<I, O> = for<'t> fn(&'t mut Tx, &'t [Item<I>]) -> BoxFuture<'t, Result<Vec<O>, DbError>>;

/// Writes of one kind, an item per caller, written by one call of a [`WriteAll`] for all
/// the items queued meanwhile (up to [`MAX_GROUP`]), in a write of the database's group
/// commit. Each caller gets its own output, once the transaction has committed. When the
/// call fails, each of its items is written again by a call of its own, so one bad item
/// fails by itself. Clones share the queue; its task ends when the last one is dropped.
pub struct Batched<I, O> {
    queue: mpsc::UnboundedSender<(Item<I>, Answer<O>)>,
}

impl<I, O> Clone for Batched<I, O> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone() }
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> Batched<I, O> {
    /// Starts the task that takes the queued items and writes them with `write_all`.
    pub fn start(db: Db, write_all: WriteAll<I, O>) -> Self {
        let (queue, items) = mpsc::unbounded_channel();
        tokio::spawn(run_batches(db, write_all, items));
        Self { queue }
    }

    /// Writes `value` with the others queued meanwhile; its output once committed.
    pub async fn write(&self, value: I) -> Result<O, DbError> {
        let (answer, answered) = oneshot::channel();
        let item = Item { value, trace: crate::trace::current() };
        self.queue.send((item, answer)).map_err(|_| lost("the batched writer has stopped"))?;
        answered.await.map_err(|_| lost("the batched writer stopped before answering"))?
    }
}

async fn run_batches<I: Send + Sync + 'static, O: Send + 'static>(
    db: Db,
    write_all: WriteAll<I, O>,
    mut queue: mpsc::UnboundedReceiver<(Item<I>, Answer<O>)>,
) {
    while let Some(first) = queue.recv().await {
        let (items, answers): (Vec<_>, Vec<_>) = gather(first, &mut queue).into_iter().unzip();
        let items = Arc::new(items);
        let all = 0..items.len();
        match call(&db, write_all, items.clone(), all).await {
            Ok(outputs) => {
                for (answer, output) in answers.into_iter().zip(outputs) {
                    // The caller may have gone (its request was dropped); its write stands.
                    let _ = answer.send(Ok(output));
                }
            }
            Err(e) if answers.len() == 1 => {
                let _ = answers.into_iter().next().expect("one").send(Err(e));
            }
            Err(e) => {
                tracing::debug!(writes = answers.len(), error = %e, "a batched write failed; writing each item alone");
                // Side by side: the group commit puts them in one transaction again, and
                // runs each alone if that fails.
                let alone = answers.into_iter().enumerate().map(|(i, answer)| {
                    let (db, items) = (db.clone(), items.clone());
                    async move {
                        let output = call(&db, write_all, items, i..i + 1).await.map(|mut o| o.remove(0));
                        let _ = answer.send(output);
                    }
                });
                futures::future::join_all(alone).await;
            }
        }
    }
}

/// One call of `write_all` for `items[range]`, in a write of the group commit; checks that
/// it answered once per item.
async fn call<I: Send + Sync + 'static, O: Send + 'static>(
    db: &Db,
    write_all: WriteAll<I, O>,
    items: Arc<Vec<Item<I>>>,
    range: std::ops::Range<usize>,
) -> Result<Vec<O>, DbError> {
    db.write(move |tx| {
        let (items, range) = (items.clone(), range.clone());
        Box::pin(async move {
            let outputs = write_all(tx, &items[range.clone()]).await?;
            // Checked before the commit: a call that answers wrongly rolls back rather than
            // committing writes whose callers would be told they failed.
            match outputs.len() == range.len() {
                true => Ok(outputs),
                false => {
                    Err(lost(&format!("a batched write answered {} outputs for {} items", outputs.len(), range.len())))
                }
            }
        })
    })
    .await
}
