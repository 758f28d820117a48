//! `--include` / `--exclude`: which listed keys take part in a copy.

use ferry_core::{Error, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Patterns without a `/` match a file's name in any directory (`*.csv`); patterns with a
/// `/` match the whole key relative to the source (`logs/2024-*/**`). A key is copied when
/// it matches no exclude and, if any include is given, at least one include.
pub struct KeyFilter {
    include_names: GlobSet,
    include_paths: GlobSet,
    exclude_names: GlobSet,
    exclude_paths: GlobSet,
    has_includes: bool,
}

fn build(patterns: &[String], flag: &str, with_slash: bool) -> Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for p in patterns.iter().filter(|p| p.contains('/') == with_slash) {
        let glob = GlobBuilder::new(p.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|e| Error::invalid_option(flag, format!("bad pattern '{p}': {e}")))?;
        set.add(glob);
    }
    set.build()
        .map_err(|e| Error::invalid_option(flag, e.to_string()))
}

impl KeyFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(Self {
            include_names: build(include, "--include", false)?,
            include_paths: build(include, "--include", true)?,
            exclude_names: build(exclude, "--exclude", false)?,
            exclude_paths: build(exclude, "--exclude", true)?,
            has_includes: !include.is_empty(),
        })
    }

    pub fn allows(&self, key: &str) -> bool {
        let name = key.rsplit('/').next().unwrap_or(key);
        if self.exclude_names.is_match(name) || self.exclude_paths.is_match(key) {
            return false;
        }
        !self.has_includes || self.include_names.is_match(name) || self.include_paths.is_match(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(include: &[&str], exclude: &[&str]) -> KeyFilter {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        KeyFilter::new(&v(include), &v(exclude)).unwrap()
    }

    #[test]
    fn names_match_anywhere_paths_match_whole_keys() {
        let k = f(&["*.csv"], &[]);
        assert!(k.allows("a.csv") && k.allows("deep/dir/b.csv"));
        assert!(!k.allows("a.json"));
        let k = f(&["logs/**"], &["*.tmp"]);
        assert!(k.allows("logs/2024/x.log"));
        assert!(!k.allows("logs/2024/x.tmp"));
        assert!(!k.allows("data/x.log"));
        let k = f(&[], &["cache/*"]);
        assert!(k.allows("a") && k.allows("cache/x/y") && !k.allows("cache/x"));
    }

    #[test]
    fn a_bad_pattern_names_the_flag() {
        let e = KeyFilter::new(&["a[".into()], &[]).err().unwrap();
        assert!(e.to_string().contains("--include"), "{e}");
    }
}
