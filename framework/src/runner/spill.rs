//! A table's per-tenant bookkeeping set aside on disk while the table is in flight.
//!
//! A table's commit covers all its tenants, so everything a tenant's record needs after the
//! commit (its prior state before the read, its next state and report line after it) waits
//! for the whole table. Held in memory, that grows with the fleet: a thousand tenants times
//! the tables in flight. Written here instead, as one JSON line each, a tenant costs a file
//! offset in memory. The file is anonymous (unlinked at once): nothing is left behind by a
//! crash, and it holds no secrets (states and report lines only).
//!
//! A spill is written, then read: [`Spill::put`] while the table collects its tenants,
//! [`Spill::finish`], then [`Spill::get`] from any task. When no temporary file can be made
//! (a read-only or full temporary folder) the lines are kept in memory instead, with a
//! warning: the run is the same, only its memory grows with the tenants again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ConnectorError, Result};

/// Where a value was set aside.
#[derive(Debug)]
pub(super) struct Spilled<T> {
    at: u64,
    len: u32,
    kind: PhantomData<fn() -> T>,
}

// Derived, these would ask `T` to be `Clone` and `Copy` too.
impl<T> Clone for Spilled<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Spilled<T> {}

enum Backing {
    /// Written through a buffer; read back once the buffer is flushed ([`Spill::finish`]).
    File {
        writer: BufWriter<File>,
    },
    Memory(Vec<u8>),
}

pub(super) struct Spill {
    /// What the values are, for messages (`prior states of orders`).
    what: String,
    backing: Backing,
    len: u64,
}

impl Spill {
    /// A spill in a new anonymous temporary file (in memory when none can be made).
    pub fn new(what: String) -> Self {
        let backing = match tempfile::tempfile() {
            Ok(file) => Backing::File { writer: BufWriter::with_capacity(64 * 1024, file) },
            Err(e) => {
                tracing::warn!(
                    "cannot make a temporary file for the {what} ({e}); they are kept in memory, which then grows \
                     with the tenants (set TMPDIR to a writable folder)"
                );
                Backing::Memory(Vec::new())
            }
        };
        Self { what, backing, len: 0 }
    }

    /// Sets `value` aside. (A blocking write, but into the page cache through a buffer: a few
    /// hundred bytes, as the tenants arrive one by one.)
    pub fn put<T: Serialize>(&mut self, value: &T) -> Result<Spilled<T>> {
        let line = serde_json::to_vec(value)
            .map_err(|e| ConnectorError::permanent(format!("cannot set aside one of the {}: {e}", self.what)))?;
        let len = u32::try_from(line.len())
            .map_err(|_| ConnectorError::permanent(format!("one of the {} is over 4 GiB", self.what)))?;
        match &mut self.backing {
            Backing::File { writer } => writer.write_all(&line).map_err(|e| self.io_error("write", &e))?,
            Backing::Memory(bytes) => bytes.extend_from_slice(&line),
        }
        let at = self.len;
        self.len += u64::from(len);
        Ok(Spilled { at, len, kind: PhantomData })
    }

    /// Ends the writes: what was put can be read from now on.
    pub fn finish(&mut self) -> Result<()> {
        if let Backing::File { writer } = &mut self.backing {
            writer.flush().map_err(|e| self.io_error("write", &e))?;
        }
        Ok(())
    }

    /// A value set aside (after [`Spill::finish`]).
    pub fn get<T: DeserializeOwned>(&self, spilled: Spilled<T>) -> Result<T> {
        let mut line = vec![0; spilled.len as usize];
        let read = match &self.backing {
            Backing::File { writer } => {
                writer.get_ref().read_exact_at(&mut line, spilled.at).map_err(|e| self.io_error("read", &e))
            }
            Backing::Memory(bytes) => {
                let range = spilled.at as usize..spilled.at as usize + spilled.len as usize;
                bytes.get(range).map(|b| line.copy_from_slice(b)).ok_or_else(|| {
                    ConnectorError::permanent(format!(
                        "one of the {} is past their end; report this as a bug",
                        self.what
                    ))
                })
            }
        };
        read?;
        serde_json::from_slice(&line)
            .map_err(|e| ConnectorError::permanent(format!("cannot read back one of the {}: {e}", self.what)))
    }

    /// A temporary file that fails is the machine's problem (disk full, I/O error): the
    /// tenant fails for this run and the next run tries again.
    fn io_error(&self, doing: &str, e: &std::io::Error) -> ConnectorError {
        ConnectorError::transient(format!(
            "cannot {doing} the temporary file that holds the {} ({e}); check the free space of the temporary \
             folder (TMPDIR)",
            self.what
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(mut spill: Spill) {
        let values: Vec<String> = (0..1000).map(|i| format!("tenant {i} \"quoted\" é\n")).collect();
        let at: Vec<Spilled<String>> = values.iter().map(|v| spill.put(v).unwrap()).collect();
        spill.finish().unwrap();
        // Read back out of order, as tenants commit in any order.
        for i in (0..values.len()).rev().step_by(7) {
            assert_eq!(spill.get(at[i]).unwrap(), values[i]);
        }
        assert_eq!(spill.get(at[0]).unwrap(), values[0]);
    }

    #[test]
    fn values_come_back_as_they_were_put_from_a_file() {
        let spill = Spill::new("test values".into());
        assert!(matches!(spill.backing, Backing::File { .. }), "the machine's temporary folder is writable");
        round_trip(spill);
    }

    #[test]
    fn values_come_back_as_they_were_put_from_memory() {
        round_trip(Spill { what: "test values".into(), backing: Backing::Memory(Vec::new()), len: 0 });
    }

    #[test]
    fn a_value_read_as_another_type_is_an_error_not_a_panic() {
        let mut spill = Spill::new("test values".into());
        let at = spill.put(&"not a number").unwrap();
        spill.finish().unwrap();
        let wrong = Spilled::<u64> { at: at.at, len: at.len, kind: PhantomData };
        let e = spill.get(wrong).unwrap_err().to_string();
        assert!(e.contains("cannot read back one of the test values"), "{e}");
    }
}
