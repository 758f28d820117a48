//! Partitions: one transfer shared by several processes (the pods of a Kubernetes Indexed
//! Job), none of which talks to the others.
//!
//! Each process lists the source, or plans the table's ranges, exactly as a whole run
//! would, and keeps its own share: files by a hash of their key, table ranges round robin.
//! What cannot be split (one file, a query, a table read in one piece, one output file)
//! is partition 0's alone.

use std::fmt;

use ferry_core::{ChecksumAlgo, Error, Result};

/// Partition `index` of `count`: one of several processes sharing one transfer. Every
/// process decides alone, and the same way, which files, table ranges and outputs are its
/// own, so together they do the work of one run, each piece once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

impl Partition {
    /// Checks that `index` is one of `count` partitions, counted from 0.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 {
            return Err(Error::invalid_option("--partitions", "must be at least 1"));
        }
        if index >= count {
            return Err(Error::invalid_option(
                "--partition",
                format!("{index} is not below --partitions {count} (partitions count from 0)"),
            ));
        }
        Ok(Self { index, count })
    }

    /// Whether the file or object `key` is this partition's: a hash of the key decides,
    /// so processes that list the same source agree whatever order they list it in.
    pub fn owns_key(&self, key: &str) -> bool {
        let digest = ChecksumAlgo::Xxh3.digest(key.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest.bytes()[..8]);
        u64::from_be_bytes(head) % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether unit `unit` of a plan every partition makes alike (the ranges of a table
    /// scan) is this partition's: round robin, so neighbouring ranges spread out.
    pub fn owns_unit(&self, unit: usize) -> bool {
        unit as u64 % u64::from(self.count) == u64::from(self.index)
    }

    /// Partition 0 does work that cannot be split; the others leave it alone.
    pub fn is_first(&self) -> bool {
        self.index == 0
    }

    /// Why this partition has nothing to do, for the one line it prints.
    pub(crate) fn idle(&self, why: impl fmt::Display) -> String {
        format!("{self}: nothing to do: {why}")
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} of {}", self.index, self.count)
    }
}

/// What a partition keeps of a piece of work, and why it keeps nothing, when it does.
pub(crate) struct Share<T> {
    pub items: Vec<T>,
    pub idle: Option<String>,
}

impl<T> Share<T> {
    fn all(items: Vec<T>) -> Self {
        Self { items, idle: None }
    }
}

/// The files (named by `key`) that are `partition`'s; all of them without a partition.
pub(crate) fn files<T, K: AsRef<str>>(
    partition: Option<Partition>,
    items: Vec<T>,
    key: impl Fn(&T) -> K,
) -> Share<T> {
    let Some(p) = partition else {
        return Share::all(items);
    };
    let total = items.len();
    let items: Vec<T> = items
        .into_iter()
        .filter(|i| p.owns_key(key(i).as_ref()))
        .collect();
    let idle = (items.is_empty() && total > 0)
        .then(|| p.idle(format!("none of the source's {total} files falls to it")));
    Share { items, idle }
}

/// A partition's share of a listing that streams: decided file by file, as [`files`] and
/// [`whole`] decide for a listing in memory.
pub(crate) struct StreamShare {
    partition: Option<Partition>,
    /// The listing names one object, which only partition 0 copies.
    single: bool,
    listed: u64,
    kept: u64,
}

impl StreamShare {
    pub(crate) fn new(partition: Option<Partition>, single: bool) -> Self {
        Self {
            partition,
            single,
            listed: 0,
            kept: 0,
        }
    }

    /// Whether the file `key` is this partition's.
    pub(crate) fn keeps(&mut self, key: &str) -> bool {
        self.listed += 1;
        let keep = match self.partition {
            None => true,
            Some(p) if self.single => p.is_first(),
            Some(p) => p.owns_key(key),
        };
        self.kept += u64::from(keep);
        keep
    }

    /// Why this partition had nothing to do, once the listing is over.
    pub(crate) fn idle(&self) -> Option<String> {
        let p = self.partition?;
        if self.single {
            return (!p.is_first())
                .then(|| p.idle("the source is one object; partition 0 does it all"));
        }
        (self.kept == 0 && self.listed > 0).then(|| {
            p.idle(format!(
                "none of the source's {} files falls to it",
                self.listed
            ))
        })
    }
}

/// Work that cannot be split (`what` says why): partition 0's alone.
pub(crate) fn whole<T>(partition: Option<Partition>, items: Vec<T>, what: &str) -> Share<T> {
    match partition {
        Some(p) if !p.is_first() => Share {
            items: Vec::new(),
            idle: Some(p.idle(format!("{what}; partition 0 does it all"))),
        },
        _ => Share::all(items),
    }
}

/// The units `0..total` of a plan every partition makes alike (a table's ranges) that are
/// `partition`'s.
pub(crate) fn units(partition: Option<Partition>, total: usize) -> Share<usize> {
    let Some(p) = partition else {
        return Share::all((0..total).collect());
    };
    let items: Vec<usize> = (0..total).filter(|&u| p.owns_unit(u)).collect();
    let idle = items.is_empty().then(|| {
        p.idle(if total == 1 {
            "the source is read in one piece (a query, or a table too small or without a key to split); partition 0 reads it".to_string()
        } else {
            format!("the source splits into {total} ranges, fewer than the partitions")
        })
    });
    Share { items, idle }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_falls_to_exactly_one_partition() {
        let keys: Vec<String> = (0..1000).map(|i| format!("logs/2026/{i}.csv")).collect();
        let mut seen = vec![0; keys.len()];
        for index in 0..3 {
            let p = Partition::new(index, 3).unwrap();
            let share = files(Some(p), keys.iter().collect(), |k| k.to_string());
            // Roughly even: a hash, not a lottery.
            assert!(share.items.len() > 250, "{}", share.items.len());
            for k in share.items {
                seen[keys.iter().position(|x| x == k).unwrap()] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        // The listing's order does not matter.
        let p = Partition::new(1, 3).unwrap();
        let forward = files(Some(p), keys.clone(), String::clone).items;
        let reversed = keys.iter().rev().cloned().collect();
        let mut backward = files(Some(p), reversed, String::clone).items;
        backward.reverse();
        assert_eq!(forward, backward);
    }

    #[test]
    fn ranges_go_round_robin_and_a_whole_source_goes_to_partition_0() {
        let share = |i| units(Some(Partition::new(i, 3).unwrap()), 7);
        assert_eq!(share(0).items, [0, 3, 6]);
        assert_eq!(share(1).items, [1, 4]);
        assert_eq!(share(2).items, [2, 5]);
        assert_eq!(units(None, 2).items, [0, 1]);
        let idle = units(Some(Partition::new(2, 3).unwrap()), 1).idle.unwrap();
        assert!(
            idle.starts_with("partition 2 of 3: nothing to do: the source is read in one piece"),
            "{idle}"
        );
        assert!(units(Some(Partition::new(0, 3).unwrap()), 1).idle.is_none());
        let one = whole(
            Some(Partition::new(1, 2).unwrap()),
            vec!["a"],
            "the source is one file",
        );
        assert!(one.items.is_empty());
        assert_eq!(
            one.idle.as_deref(),
            Some(
                "partition 1 of 2: nothing to do: the source is one file; partition 0 does it all"
            )
        );
        assert_eq!(whole(None, vec!["a"], "").items, ["a"]);
    }

    #[test]
    fn a_streamed_share_keeps_what_a_listed_share_keeps() {
        let keys: Vec<String> = (0..300).map(|i| format!("k/{i}")).collect();
        for index in 0..3 {
            let p = Some(Partition::new(index, 3).unwrap());
            let listed = files(p, keys.clone(), String::clone);
            let mut streamed = StreamShare::new(p, false);
            let kept: Vec<String> = keys.iter().filter(|k| streamed.keeps(k)).cloned().collect();
            assert_eq!(kept, listed.items);
            assert_eq!(streamed.idle(), listed.idle);
        }
        let mut one = StreamShare::new(Some(Partition::new(1, 2).unwrap()), true);
        assert!(!one.keeps("a"));
        assert_eq!(
            one.idle().as_deref(),
            Some("partition 1 of 2: nothing to do: the source is one object; partition 0 does it all")
        );
        let other = (0..4)
            .map(|i| Partition::new(i, 4).unwrap())
            .find(|p| !p.owns_key("k/0"))
            .unwrap();
        let mut none = StreamShare::new(Some(other), false);
        assert!(!none.keeps("k/0"));
        let why = none.idle().unwrap();
        assert!(
            why.ends_with("nothing to do: none of the source's 1 files falls to it"),
            "{why}"
        );
    }

    #[test]
    fn an_index_outside_the_partitions_is_refused() {
        let e = Partition::new(3, 3).unwrap_err();
        assert!(e.to_string().contains("--partition"), "{e}");
        assert!(e.to_string().contains("not below --partitions 3"), "{e}");
        assert!(Partition::new(0, 0).is_err());
    }
}
