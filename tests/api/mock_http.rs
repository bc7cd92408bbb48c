//! wiremock's [`MockServer`], dropped where its drop cannot hang the test.
//!
//! `MockServer`'s `Drop` verifies its mocks with `futures::executor::block_on`, which takes a
//! tokio `RwLock`. Run on a runtime thread (the end of a `#[tokio::test]`, or a `TestApp`
//! dropped there), that lock asks tokio's cooperative budget first; a test that has just
//! awaited thousands of calls may have spent it, and then tokio answers Pending and leaves the
//! wake-up to the runtime, which this very thread, blocked in the drop, would have to run. The
//! test then hangs for good with every thread idle (seen on ~1 % of runs of
//! `grant_safety::callers_giving_up_on_a_shared_read_leave_the_others_served`; a stack dump
//! showed the test thread in `MockServer::drop` waiting on the lock). [`Server`] drops its
//! `MockServer` on a thread of its own, outside any runtime, where the lock is simply taken.

use std::ops::Deref;

use wiremock::MockServer;

/// A [`MockServer`] (it derefs to one) whose drop runs off the runtime's threads.
pub struct Server(Option<MockServer>);

impl Server {
    pub async fn start() -> Self {
        Self(Some(MockServer::start().await))
    }
}

impl Deref for Server {
    type Target = MockServer;

    fn deref(&self) -> &MockServer {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            // Read here: on the helper thread nothing is panicking, and wiremock's verify panics
            // on an unmet expectation unless the thread is already unwinding. A second panic
            // while this one unwinds would abort the whole test binary.
            let unwinding = std::thread::panicking();
            let dropped = std::thread::spawn(move || drop(server)).join();
            if let Err(panic) = dropped {
                if !unwinding {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// The hang, made certain: a task that has spent its whole cooperative budget drops a server.
/// (A bare `MockServer` in `Server`'s place never returns from the drop.)
#[test]
fn a_server_dropped_by_a_task_that_spent_its_budget_does_not_hang() {
    let (done, finished) = std::sync::mpsc::channel();
    // On a thread of its own, so that a hang fails this test instead of holding the run.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = Server::start().await;
            spend_the_budget().await;
            assert!(!tokio::task::coop::has_budget_remaining(), "the budget is spent");
            drop(server);
        });
        let _ = done.send(());
    });
    assert!(
        finished.recv_timeout(std::time::Duration::from_secs(20)).is_ok(),
        "dropping the server hung"
    );
}

/// Receives ready messages, each of which costs a unit of the task's budget, until none is left.
async fn spend_the_budget() {
    let (send, mut receive) = tokio::sync::mpsc::unbounded_channel();
    while tokio::task::coop::has_budget_remaining() {
        send.send(()).unwrap();
        receive.recv().await;
    }
}

/// The wrapper is only a fix where it is used: every scripted server in the suites starts
/// through it.
#[test]
fn no_test_starts_a_bare_mock_server() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut bare = Vec::new();
    let mut dirs = vec![tests];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("api/mock_http.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if text.contains("MockServer::start") || text.contains("MockServer::builder") {
                    bare.push(path.display().to_string());
                }
            }
        }
    }
    assert!(
        bare.is_empty(),
        "start scripted servers with mock_http::Server: {bare:?}"
    );
}
