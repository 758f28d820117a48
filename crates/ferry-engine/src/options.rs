//! Settings of one copy, validated before any data moves.

use std::path::PathBuf;

use ferry_core::{ChecksumAlgo, Error, Result, WriteMode};
use ferry_state::StateStore;

use crate::Partition;

pub const MIB: u64 = 1024 * 1024;

/// How a copy runs. [`CopyOptions::default`] holds the measured defaults.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Files in flight at once.
    pub transfers: usize,
    /// Parts in flight at once for one file.
    pub concurrency: usize,
    /// Size of each part of a large file; files up to this size move in one request.
    pub part_size: u64,
    /// Upper bound of the bytes held in memory for data in flight, across all files.
    pub max_buffer: u64,
    pub checksum: ChecksumAlgo,
    /// Re-read the destination after the copy and compare checksums.
    pub verify: bool,
    /// Continue from the checkpoint of an earlier run of the same copy.
    pub resume: bool,
    /// Only list what would be copied.
    pub dry_run: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Where checkpoints live, unless `state_url` is set.
    pub state_dir: PathBuf,
    /// A PostgreSQL database (`postgres://user@host:port/db`) to keep checkpoints in
    /// instead of `state_dir`, so that processes on several machines share them: a run
    /// interrupted on one continues on another.
    pub state_url: Option<String>,
    /// Names the checkpoint apart from the two addresses: a service gives each run its own,
    /// so a new run starts afresh and a resumed one finds its own progress.
    pub run_key: Option<String>,
    /// Run only this share of the work, for transfers split over several processes (the
    /// pods of a Kubernetes Indexed Job). Each partition has a checkpoint of its own.
    pub partition: Option<Partition>,
    /// Bytes of events per exported object (a Kafka export rolls to a new object there).
    pub object_size: u64,
    /// Unpack the source archive into a tree, or pack the source tree into one archive.
    pub archive: Option<crate::ArchiveAction>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            transfers: 16,
            concurrency: 4,
            part_size: 16 * MIB,
            max_buffer: 128 * MIB,
            checksum: ChecksumAlgo::Crc32c,
            verify: false,
            resume: true,
            dry_run: false,
            include: Vec::new(),
            exclude: Vec::new(),
            state_dir: default_state_dir(),
            state_url: None,
            run_key: None,
            partition: None,
            object_size: 64 * MIB,
            archive: None,
        }
    }
}

impl CopyOptions {
    pub fn validate(&self) -> Result<()> {
        if self.transfers == 0 || self.transfers > 1024 {
            return Err(Error::invalid_option(
                "--transfers",
                "must be between 1 and 1024",
            ));
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(Error::invalid_option(
                "--concurrency",
                "must be between 1 and 256",
            ));
        }
        if self.part_size < 64 * 1024 || self.part_size > 4096 * MIB {
            return Err(Error::invalid_option(
                "--part-size",
                "must be between 64KiB and 4GiB",
            ));
        }
        if self.max_buffer < self.part_size {
            return Err(Error::invalid_option(
                "--max-buffer",
                "must be at least the part size",
            ));
        }
        if let Some(url) = &self.state_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(Error::invalid_option(
                    "--state-url",
                    "expected postgres://user@host:port/database",
                ));
            }
        }
        if let Some(p) = self.partition {
            Partition::new(p.index, p.count)?;
        }
        Ok(())
    }

    /// The checkpoint store these options name: PostgreSQL at `state_url` when set, else
    /// the SQLite database in `state_dir`. Opened once per copy or transfer.
    pub fn state_store(&self) -> Result<StateStore> {
        StateStore::open_for(&self.state_dir, self.state_url.as_deref())
    }

    /// A partitioned load into a table must add to it: with `overwrite`, each partition
    /// would replace the rows the others loaded.
    pub fn check_destination_mode(&self, mode: WriteMode) -> Result<()> {
        match self.partition {
            Some(p) if mode == WriteMode::Overwrite => Err(Error::invalid_option(
                "spec.destination.mode",
                format!(
                    "overwrite (the default) would make each of the {} partitions replace the table; use append or upsert",
                    p.count
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The text a run id is made of, extended by the run key and the partition, so that
    /// neither two service runs nor two partitions share a checkpoint.
    pub(crate) fn run_id_suffix(&self) -> String {
        let mut text = String::new();
        if let Some(key) = &self.run_key {
            text.push_str(&format!("\nrun {key}"));
        }
        if let Some(p) = self.partition {
            text.push_str(&format!("\npartition {}/{}", p.index, p.count));
        }
        if let Some(action) = self.archive {
            text.push_str(&format!("\narchive {action}"));
        }
        text
    }
}

/// `$FERRY_STATE_DIR`, else `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ferry");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/ferry"),
        None => PathBuf::from(".ferry-state"),
    }
}

/// Parses sizes such as `16MiB`, `16M`, `512k`, `1GiB` or a plain number of bytes.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 16MiB, 512k, 1G)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' in '{text}'")),
    };
    Ok((num * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 * MIB);
        assert_eq!(parse_size("512k").unwrap(), 512 * 1024);
        assert_eq!(parse_size("1.5G").unwrap(), 3 * 512 * MIB);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn out_of_range_settings_name_the_flag() {
        let opts = CopyOptions {
            part_size: 1024,
            ..CopyOptions::default()
        };
        let e = opts.validate().unwrap_err();
        assert!(e.to_string().contains("--part-size"));
        assert_eq!(e.exit_code(), 2);
        let opts = CopyOptions {
            state_url: Some("mysql://ferry:pw@db/state".into()),
            ..CopyOptions::default()
        };
        let e = opts.validate().unwrap_err();
        assert!(e.to_string().contains("--state-url"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
