//! The coordinator's side of the worker processes: start them (this executable again, with
//! the hidden `worker` subcommand), start rounds, collect their results.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::error::BenchError;
use crate::worker::RoundResult;

struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Running worker processes, idle between rounds.
pub struct WorkerPool {
    workers: Vec<WorkerProcess>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.workers.len())
            .finish()
    }
}

/// Splits `total` client tasks over `workers` processes as evenly as possible.
pub fn split(total: usize, workers: usize) -> Vec<usize> {
    let workers = workers.max(1);
    (0..workers)
        .map(|i| total / workers + usize::from(i < total % workers))
        .collect()
}

impl WorkerPool {
    /// Starts `workers` processes sharing `concurrency` client tasks over the devices in the
    /// identity file, and waits until each has loaded its devices.
    pub fn start(
        identities: &Path,
        workers: usize,
        concurrency: usize,
        commands: usize,
    ) -> Result<WorkerPool, BenchError> {
        let exe = std::env::current_exe().map_err(BenchError::io("locate this executable"))?;
        let mut pool = WorkerPool {
            workers: Vec::new(),
        };
        for (index, tasks) in split(concurrency, workers).into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .arg("--identities")
                .arg(identities)
                .args(["--index", &index.to_string()])
                .args(["--workers", &workers.to_string()])
                .args(["--concurrency", &tasks.to_string()])
                .args(["--commands", &commands.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(BenchError::io("start a worker process"))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Worker {
                    index,
                    reason: "its standard input and output could not be connected".into(),
                });
            };
            pool.workers.push(WorkerProcess {
                child,
                stdin,
                stdout: BufReader::new(stdout),
            });
        }
        for index in 0..pool.workers.len() {
            let line = pool.read_line(index)?;
            if line != "ready" {
                return Err(BenchError::Worker {
                    index,
                    reason: format!("expected `ready`, got {line:?}"),
                });
            }
        }
        Ok(pool)
    }

    fn read_line(&mut self, index: usize) -> Result<String, BenchError> {
        let worker = self.workers.get_mut(index).ok_or(BenchError::Worker {
            index,
            reason: "no such worker".into(),
        })?;
        let mut line = String::new();
        let n = worker
            .stdout
            .read_line(&mut line)
            .map_err(BenchError::io(format!("read from worker {index}")))?;
        if n == 0 {
            let status = worker
                .child
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(BenchError::Worker {
                index,
                reason: format!("it exited ({status}); its error is printed above"),
            });
        }
        Ok(line.trim_end().to_owned())
    }

    /// Runs one round in every worker at once and returns their results once all are done.
    pub fn round(&mut self) -> Result<Vec<RoundResult>, BenchError> {
        for (index, worker) in self.workers.iter_mut().enumerate() {
            writeln!(worker.stdin, "go")
                .and_then(|()| worker.stdin.flush())
                .map_err(BenchError::io(format!("start a round in worker {index}")))?;
        }
        let mut results = Vec::with_capacity(self.workers.len());
        for index in 0..self.workers.len() {
            let line = self.read_line(index)?;
            let json = line
                .strip_prefix("result ")
                .ok_or_else(|| BenchError::Worker {
                    index,
                    reason: format!("expected a result line, got {line:?}"),
                })?;
            results.push(serde_json::from_str(json)?);
        }
        Ok(results)
    }

    /// Tells every worker to exit and waits for them.
    pub fn stop(mut self) -> Result<(), BenchError> {
        for (index, mut worker) in self.workers.drain(..).enumerate() {
            // A worker that already died is reported by its exit status below.
            let _ = writeln!(worker.stdin, "quit").and_then(|()| worker.stdin.flush());
            drop(worker.stdin);
            let status = worker
                .child
                .wait()
                .map_err(BenchError::io(format!("wait for worker {index}")))?;
            if !status.success() {
                return Err(BenchError::Worker {
                    index,
                    reason: format!("it exited with {status}"),
                });
            }
        }
        Ok(())
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Only reached with workers left when a run fails midway.
        for worker in &mut self.workers {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_split_evenly() {
        assert_eq!(split(64, 2), vec![32, 32]);
        assert_eq!(split(7, 3), vec![3, 2, 2]);
        assert_eq!(split(5, 1), vec![5]);
        assert_eq!(split(10, 0), vec![10]);
        assert_eq!(split(64, 3).iter().sum::<usize>(), 64);
    }
}
