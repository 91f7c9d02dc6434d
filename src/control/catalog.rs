//! The control plane's source: a directory of policy files, read into an immutable [`Catalog`].
//!
//! Each file is validated as `palisade check` does. A file that turns bad keeps its last good
//! version in force (its error is reported); a file that is removed takes its policies with it.
//! The directory is read by name, following symlinks and skipping dot-entries, so a mounted
//! ConfigMap's `..data` swap reads as one consistent change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Workload;
use crate::policy::{parse_file, selects, SecurityPolicy};

/// One policy as the control plane serves it.
#[derive(Debug)]
pub struct CatalogEntry {
    pub namespace: String,
    pub name: String,
    /// The file name in the directory.
    pub source: String,
    /// The line of its `metadata.name` in that file.
    pub line: usize,
    /// The lines of the fields checked across policies (a JWT issuer's), for their errors.
    field_lines: Vec<(String, usize)>,
    pub policy: SecurityPolicy,
    /// The policy as one YAML document: what a sidecar receives and parses. Shared by every
    /// stream that sends it.
    pub document: bytes::Bytes,
    digest: [u8; 32],
}

/// How one file of the directory stands.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub file: String,
    /// The policies of its last good version, which are in force.
    pub policies: Vec<String>,
    /// Why the current contents were refused; empty when they are in force.
    pub errors: Vec<String>,
}

/// Every good policy of the directory, at one moment.
#[derive(Debug)]
pub struct Catalog {
    /// A digest of every policy in force: changes whenever any does.
    pub version: String,
    by_namespace: BTreeMap<String, Vec<Arc<CatalogEntry>>>,
    pub sources: Vec<SourceStatus>,
    /// Whether the directory could be read at all the last time.
    pub readable: bool,
    /// When this catalog was made: the start of every push it causes.
    pub made_at: Option<std::time::Instant>,
    /// How many catalogs were published before this one: a stream that has looked at this
    /// generation has sent whatever it had to (`/status` shows both).
    pub generation: u64,
    /// The source's revision ([`REVISION_FILE`]); 0 when it does not say.
    pub revision: u64,
    /// The highest revision this process has read: a sidecar holding one up to it holds what
    /// this replica read and then left (a `helm rollback` re-applies the old revision's
    /// manifest, number and all), not what it has yet to read.
    pub highest_revision: u64,
    /// Why streams may not send from it (`/status`); `None`: they may ([`Catalog::servable`]).
    pub unservable_because: Option<String>,
}

impl Default for Catalog {
    /// Before the directory was first read: nothing to send yet.
    fn default() -> Self {
        Catalog {
            version: String::new(),
            by_namespace: BTreeMap::new(),
            sources: Vec::new(),
            readable: false,
            made_at: None,
            generation: 0,
            revision: 0,
            highest_revision: 0,
            unservable_because: Some("the policy directory was not read yet".into()),
        }
    }
}

/// The file of the policy directory that holds its revision, a decimal number that only grows
/// (the Helm chart writes the release's revision, which a rollback increases too). Read after
/// the policy files, so a ConfigMap swapped between the two reads gives the new revision with
/// the old policies, never the other way round: a sidecar may then refuse an older snapshot a
/// little early, but never take one.
pub const REVISION_FILE: &str = "revision";

/// The policies that select one workload, and the version naming exactly that set.
pub struct Selection {
    pub version: String,
    pub entries: Vec<Arc<CatalogEntry>>,
    /// The catalog's [`Catalog::revision`].
    pub revision: u64,
}

impl Catalog {
    /// Whether streams may send from it. Not until the directory was read with every file in
    /// force, or known: a refused file this process never saw good holds policies it cannot
    /// tell, and without them a workload they select would be sent fewer rules than it has (a
    /// restarted replica would send the empty set where the last good version denied). Once a
    /// catalog was servable, every later one is: a file that turns bad keeps its last good
    /// version, and one that arrives bad was never in force anywhere.
    pub fn servable(&self) -> bool {
        self.unservable_because.is_none()
    }

    pub fn len(&self) -> usize {
        self.by_namespace.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The selecting policies, in (namespace, name) order. The version is a digest of their
    /// content alone, so a change elsewhere in the directory leaves it alone, and every replica
    /// reading the same files computes the same version.
    pub fn select(&self, workload: &Workload) -> Selection {
        let entries: Vec<Arc<CatalogEntry>> = self
            .by_namespace
            .get(&workload.namespace)
            .map(|all| all.iter().filter(|e| selects(&e.policy, workload)).cloned().collect())
            .unwrap_or_default();
        let version = digest_version(entries.iter().map(|e| &e.digest[..]));
        Selection { version, entries, revision: self.revision }
    }
}

fn digest_version<'a>(parts: impl Iterator<Item = &'a [u8]>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish().as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

struct FileState {
    /// Digest of the bytes last read, good or bad.
    seen: [u8; 32],
    /// The file's metadata when they were read: while it holds, the file is not read again.
    stamp: Option<FileStamp>,
    /// The current contents, parsed: their policies, or why they cannot be read.
    parsed: Result<Vec<Arc<CatalogEntry>>, Vec<String>>,
    /// The policies in force from this file: its last version that was taken.
    good: Vec<Arc<CatalogEntry>>,
    /// Why the current contents are not in force; empty when they are.
    errors: Vec<String>,
    /// The contents changed in this scan: refusing them is a new refusal, even when it says
    /// what the last one said.
    fresh: bool,
    /// Good contents that changed in the same scan as contents that were refused: held back with
    /// them (a policy moved from one file into a refused one must not vanish from both) until
    /// no file is refused.
    held: Option<String>,
    /// Some version of it was taken since this process started.
    ever_good: bool,
}

impl Default for FileState {
    fn default() -> Self {
        FileState {
            seen: [0; 32],
            stamp: None,
            parsed: Ok(Vec::new()),
            good: Vec::new(),
            errors: Vec::new(),
            fresh: false,
            held: None,
            ever_good: false,
        }
    }
}

/// Reads the directory and remembers each file's last good version.
pub struct PolicyDirectory {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    readable: Option<bool>,
    /// The [`REVISION_FILE`]'s number, or why it is not one.
    revision: Result<u64, String>,
    /// The highest number it has held.
    highest_revision: u64,
    /// A servable catalog was made: see [`Catalog::servable`].
    served: bool,
    /// [`STAMP_SETTLED`]; tests that cannot wait set it to nothing.
    stamp_settled: std::time::Duration,
    /// Files read so far (their bytes, not their metadata).
    reads: u64,
}

/// What one scan found.
pub struct ScanOutcome {
    /// A new catalog when anything changed: policies, errors, or readability.
    pub catalog: Option<Catalog>,
    /// Files refused in this scan, with their errors, for logs, metrics and events.
    pub rejected: Vec<(String, Vec<String>)>,
    /// Good files held back with a refused one they changed with, and why: not refusals of
    /// their own (no `rejected` count or event), only told in the log and `/status`.
    pub held: Vec<(String, Vec<String>)>,
    /// Files whose new contents were taken.
    pub accepted: Vec<String>,
}

/// A policy directory's files by name, each with its text (or why it could not be read) and
/// its digest. An unreadable file's digest is its reason's: a FIFO after an oversized file is a
/// new refusal.
type Listing = BTreeMap<String, (std::io::Result<String>, [u8; 32], Option<FileStamp>)>;

/// What says a file's bytes are the ones read before: the same file (device and inode, so a
/// ConfigMap's swapped `..data` link is a new one), size, and modification and change times.
/// Each scan (four a second) read and hashed every file: 14% of a core for a directory of 33 MB
/// (outside tester q3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// A change time this recent may be shared by a write that comes after the read (file systems
/// that keep seconds): such a file is read again.
const STAMP_SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn settled(&self, after: std::time::Duration) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let ctime = std::time::Duration::new(self.ctime.0.max(0) as u64, self.ctime.1.clamp(0, 999_999_999) as u32);
        now.saturating_sub(ctime) >= after
    }
}

/// Two reads of the directory found the same files with the same bytes.
fn same_files(a: &std::io::Result<Listing>, b: &std::io::Result<Listing>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|((na, (_, da, _)), (nb, (_, db, _)))| na == nb && da == db)
        }
        (Err(a), Err(b)) => a.to_string() == b.to_string(),
        _ => false,
    }
}

impl PolicyDirectory {
    pub fn new(dir: PathBuf) -> Self {
        PolicyDirectory {
            dir,
            files: BTreeMap::new(),
            readable: None,
            revision: Ok(0),
            highest_revision: 0,
            served: false,
            stamp_settled: STAMP_SETTLED,
            reads: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every policy file; returns a new catalog when anything changed.
    pub fn scan(&mut self) -> ScanOutcome {
        let mut outcome = ScanOutcome { catalog: None, rejected: Vec::new(), held: Vec::new(), accepted: Vec::new() };
        // One moment's files: read again, until two reads agree, only when something changed
        // (a ConfigMap swap between two files' reads gives a set no version held).
        let first = self.list();
        let unchanged = self.readable == Some(true)
            && first.as_ref().is_ok_and(|listing| {
                listing.len() == self.files.len()
                    && listing
                        .iter()
                        .all(|(name, (_, digest, _))| self.files.get(name).is_some_and(|f| f.seen == *digest))
            });
        let listing = match unchanged {
            true => first,
            false => {
                let Some(listing) = crate::files::settled(first, || self.list(), same_files) else { return outcome };
                listing
            }
        };
        let listing = match listing {
            Ok(listing) => listing,
            Err(e) => {
                if self.readable != Some(false) {
                    self.readable = Some(false);
                    outcome
                        .rejected
                        .push((self.dir.display().to_string(), vec![format!("cannot read the directory: {e}")]));
                    outcome.catalog = Some(self.catalog());
                }
                return outcome;
            }
        };
        let mut changed = self.readable != Some(true);
        self.readable = Some(true);

        let before = self.files.len();
        self.files.retain(|name, _| listing.contains_key(name));
        changed |= self.files.len() != before;

        for (name, (contents, digest, stamp)) in listing {
            if let Some(state) = self.files.get_mut(&name).filter(|f| f.seen == digest) {
                state.stamp = stamp;
                continue;
            }
            changed = true;
            let parsed = match contents {
                Ok(text) => self.parse(&name, &text),
                Err(e) => Err(vec![format!("{}: cannot read the file: {e}", self.dir.join(&name).display())]),
            };
            let state = self.files.entry(name).or_default();
            state.seen = digest;
            state.stamp = stamp;
            state.parsed = parsed;
            state.fresh = true;
        }
        let revision = self.read_revision();
        if revision != self.revision {
            changed = true;
            if let Err(e) = &revision {
                outcome.rejected.push((REVISION_FILE.to_string(), vec![e.clone()]));
            }
            if let Ok(n) = revision {
                self.highest_revision = self.highest_revision.max(n);
            }
            self.revision = revision;
        }
        if changed {
            self.settle(&mut outcome);
            outcome.catalog = Some(self.catalog());
        }
        outcome
    }

    /// 0 when there is no such file; a file that is not a number counts as none, and says so.
    fn read_revision(&self) -> Result<u64, String> {
        let path = self.dir.join(REVISION_FILE);
        match crate::yaml::read_file(&path, 64) {
            Ok(text) => text.trim().parse().map_err(|_| {
                format!("{}: not a revision (a whole number): {:?}; snapshots carry none", path.display(), text.trim())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("{}: cannot read the revision: {e}; snapshots carry none", path.display())),
        }
    }

    /// Decides which files' current contents are taken, across the whole directory, every time
    /// anything changed: a file refused because another file defined the same policy is taken
    /// as soon as that other file no longer does. The policies in force never conflict: a
    /// policy defined twice stays with the file that had it in force, else the first by name,
    /// and the other file keeps its last good version.
    fn settle(&mut self, outcome: &mut ScanOutcome) {
        let key = |e: &CatalogEntry| (e.namespace.clone(), e.name.clone());
        // What was held back goes in with the rest once nothing is refused for its syntax (a
        // refusal for a duplicate is found again below, and holds it again).
        if self.files.values().all(|f| f.parsed.is_ok()) {
            self.files.values_mut().for_each(|f| f.held = None);
        }
        let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // Refusals for a conflict between policies: kept when the scan's other files are held
        // back below, which ends the conflict (the held file's policy leaves the set) but not
        // the refused file's mistake.
        let mut conflicted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        loop {
            let mut owners: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
            for (file, state) in &self.files {
                let taken = match &state.parsed {
                    Ok(entries) if !refused.contains_key(file) && state.held.is_none() => entries,
                    _ => &state.good,
                };
                for entry in taken {
                    owners.entry(key(entry)).or_default().push(file);
                }
            }
            let mut more = Vec::new();
            for ((namespace, name), files) in owners.iter().filter(|(_, files)| files.len() > 1) {
                let had_it =
                    |f: &&str| self.files[*f].good.iter().any(|e| &e.namespace == namespace && &e.name == name);
                let keeper = files.iter().copied().find(had_it).unwrap_or(files[0]).to_string();
                // The line of the copy in `file`, as it stands now (refused or not).
                let line_in = |file: &str| {
                    let state = &self.files[file];
                    let entries = state.parsed.as_ref().ok().into_iter().flatten().chain(&state.good);
                    entries.into_iter().find(|e| &e.namespace == namespace && &e.name == name).map_or(1, |e| e.line)
                };
                for file in files.iter().filter(|f| **f != keeper) {
                    more.push((
                        file.to_string(),
                        format!(
                            "{}:{}: metadata.name: policy {namespace}/{name} is also defined in {keeper}:{}",
                            self.dir.join(file).display(),
                            line_in(file),
                            line_in(&keeper),
                        ),
                    ));
                }
            }
            if more.is_empty() {
                more = self.authentication_conflicts(&refused);
                for (file, error) in &more {
                    conflicted.entry(file.clone()).or_default().push(error.clone());
                }
            }
            if more.is_empty() {
                // A scan is one update (one ConfigMap swap changes its files at once): when any
                // file of it is refused, its other files wait too.
                let refused_now: Vec<&str> = self
                    .files
                    .iter()
                    .filter(|(f, st)| st.fresh && (st.parsed.is_err() || refused.contains_key(*f)))
                    .map(|(f, _)| f.as_str())
                    .collect();
                if refused_now.is_empty() {
                    break;
                }
                let with = refused_now.join(", ");
                let hold: Vec<String> = self
                    .files
                    .iter()
                    .filter(|(f, st)| st.fresh && st.parsed.is_ok() && !refused.contains_key(*f) && st.held.is_none())
                    .map(|(f, _)| f.clone())
                    .collect();
                if hold.is_empty() {
                    break;
                }
                for file in hold {
                    self.files.get_mut(&file).expect("a file of the scan").held = Some(with.clone());
                }
                refused.clone_from(&conflicted);
                continue;
            }
            for (file, error) in more {
                refused.entry(file).or_default().push(error);
            }
        }
        let dir = self.dir.clone();
        for (file, state) in self.files.iter_mut() {
            let errors = match (&state.parsed, refused.remove(file)) {
                (Ok(_), Some(duplicates)) => duplicates,
                (Ok(_), None) if state.held.is_some() => vec![format!(
                    "{}: not taken yet: it changed with {}, refused in the same update; taken once that is fixed",
                    dir.join(file).display(),
                    state.held.as_deref().unwrap_or_default(),
                )],
                (Ok(entries), None) => {
                    if state.good.iter().map(|e| e.digest).ne(entries.iter().map(|e| e.digest))
                        || !state.errors.is_empty()
                    {
                        outcome.accepted.push(file.clone());
                    }
                    state.good = entries.clone();
                    state.ever_good = true;
                    Vec::new()
                }
                (Err(errors), _) => errors.clone(),
            };
            if !errors.is_empty() && (errors != state.errors || state.fresh) {
                match state.parsed.is_ok() && state.held.is_some() {
                    true => outcome.held.push((file.clone(), errors.clone())),
                    false => outcome.rejected.push((file.clone(), errors.clone())),
                }
            }
            state.fresh = false;
            state.errors = errors;
        }
    }

    /// What `palisade check` and every sidecar find across policies that may select one
    /// workload (a `when` on a header another policy forwards a claim into, a forwarded claim
    /// in a header another issuer reads tokens from, too many token locations), among the
    /// contents that would be taken: each charged to the files of this scan that take part,
    /// which keep their last good contents, as a sidecar keeps its policy when an update is bad.
    fn authentication_conflicts(&self, refused: &BTreeMap<String, Vec<String>>) -> Vec<(String, String)> {
        let mut taken: Vec<(&str, bool, crate::policy::Located)> = Vec::new();
        for (file, state) in &self.files {
            let (entries, fresh) = match &state.parsed {
                Ok(entries) if !refused.contains_key(file) && state.held.is_none() => (entries, state.fresh),
                _ => (&state.good, false),
            };
            for e in entries {
                let located = crate::policy::Located {
                    policy: e.policy.clone(),
                    file: self.dir.join(file),
                    line: e.line,
                    field_lines: e.field_lines.clone(),
                    prefix: String::new(),
                };
                taken.push((file.as_str(), fresh, located));
            }
        }
        let mut conflicts = Vec::new();
        for (file, fresh, doc) in &taken {
            let together: Vec<&crate::policy::Located> =
                taken.iter().map(|(_, _, l)| l).filter(|l| crate::policy::may_select_together(doc, l)).collect();
            let errors = crate::policy::conflicts_across_policies(doc, &together);
            if errors.is_empty() {
                continue;
            }
            // A policy in force before this scan conflicts only with what the scan brought.
            let charged: Vec<&str> = match fresh {
                true => vec![file],
                false => taken
                    .iter()
                    .filter(|(_, fresh, l)| *fresh && together.iter().any(|t| std::ptr::eq(*t, l)))
                    .map(|(f, _, _)| *f)
                    .collect(),
            };
            for f in charged {
                conflicts.extend(errors.iter().map(|e| (f.to_string(), e.to_string())));
            }
        }
        conflicts.sort();
        conflicts.dedup();
        conflicts
    }

    /// Policy files by name ([`crate::policy::is_policy_file_name`]), symlinks followed. Each
    /// is read with the limits of every policy file (regular files only, at most 1 MiB), so a
    /// FIFO, a device or a huge file is that file's error, never a stuck or swollen scan.
    fn list(&mut self) -> std::io::Result<Listing> {
        let mut listing = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(file = ?entry.file_name(), "a file whose name is not UTF-8 is not read as a policy");
                continue;
            };
            if !crate::policy::is_policy_file_name(&name) {
                continue;
            }
            let path = self.dir.join(&name);
            // Taken before the read: a write after it changes the stamp, and the file is read again.
            let stamp = std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m));
            if let Some(known) = self.files.get(&name).filter(|f| f.stamp.is_some() && f.stamp == stamp) {
                listing.insert(name, (Ok(String::new()), known.seen, stamp));
                continue;
            }
            self.reads += 1;
            let contents = crate::yaml::read_file(&path, crate::yaml::Limits::FILE.max_bytes);
            // A stamp vouches for the bytes only when it was settled as they were read (a write
            // later in the same clock tick leaves it as it was; the review), and never for a
            // read that failed (a transient EMFILE would hold until the file changed).
            let stamp = stamp.filter(|s| contents.is_ok() && s.settled(self.stamp_settled));
            let digest = match &contents {
                Ok(text) => sha256(text.as_bytes()),
                Err(e) => sha256(format!("\0unreadable: {e}").as_bytes()),
            };
            listing.insert(name, (contents, digest, stamp));
        }
        Ok(listing)
    }

    /// Parses one file into entries, refusing it whole on any error, including a policy that
    /// another file already defines.
    fn parse(&self, name: &str, text: &str) -> Result<Vec<Arc<CatalogEntry>>, Vec<String>> {
        let path = self.dir.join(name);
        let (policies, errors) = parse_file(&path, text);
        let mut errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        // JWT providers as `palisade check` judges them (an inline key set with no usable key
        // was taken here and refused by every sidecar it selected, which a new one never got
        // a first policy from); key files are the sidecars' to judge.
        let (refused, _) = crate::policy::check_providers(&policies);
        errors.extend(refused.iter().map(ToString::to_string));
        let mut entries = Vec::new();
        let mut seen_here = std::collections::BTreeSet::new();
        for located in policies {
            let m = &located.policy.metadata;
            let (namespace, policy_name) = (m.namespace.to_string(), m.name.to_string());
            if !seen_here.insert((namespace.clone(), policy_name.clone())) {
                errors.push(format!(
                    "{}: metadata.name: policy {namespace}/{policy_name} is defined twice in this file",
                    path.display()
                ));
                continue;
            }
            let document = match crate::yaml::to_string(&located.policy) {
                Ok(document) => document,
                Err(e) => {
                    errors.push(format!("{}: cannot serialise {namespace}/{policy_name}: {e}", path.display()));
                    continue;
                }
            };
            // Sidecars read what they are sent as they read a file; written out in block style,
            // a file of flow-style rules near the limit comes out a third longer, and every
            // sidecar would refuse what the control plane had taken.
            let most = crate::yaml::Limits::FILE.max_bytes;
            if document.len() > most {
                errors.push(format!(
                    "{}:{}: policy {namespace}/{policy_name}, as the control plane sends it (block YAML), is {} bytes, more than the {most} a sidecar reads; split it into smaller policies",
                    path.display(),
                    located.line,
                    document.len()
                ));
                continue;
            }
            let mut hashed = format!("{namespace}\0{policy_name}\0").into_bytes();
            hashed.extend_from_slice(document.as_bytes());
            entries.push(Arc::new(CatalogEntry {
                digest: sha256(&hashed),
                namespace,
                name: policy_name,
                source: name.to_string(),
                line: located.line,
                field_lines: located.field_lines,
                policy: located.policy,
                document: document.into(),
            }));
        }
        if errors.is_empty() {
            Ok(entries)
        } else {
            Err(errors)
        }
    }

    fn catalog(&mut self) -> Catalog {
        let mut by_namespace: BTreeMap<String, Vec<Arc<CatalogEntry>>> = BTreeMap::new();
        for entry in self.files.values().flat_map(|f| f.good.iter()) {
            by_namespace.entry(entry.namespace.clone()).or_default().push(entry.clone());
        }
        for entries in by_namespace.values_mut() {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let version = digest_version(by_namespace.values().flatten().map(|e| &e.digest[..]));
        let mut sources: Vec<SourceStatus> = self
            .files
            .iter()
            .map(|(file, state)| SourceStatus {
                file: file.clone(),
                policies: state.good.iter().map(|e| format!("{}/{}", e.namespace, e.name)).collect(),
                errors: state.errors.clone(),
            })
            .collect();
        if let Err(e) = &self.revision {
            sources.push(SourceStatus { file: REVISION_FILE.into(), policies: Vec::new(), errors: vec![e.clone()] });
        }
        let unknown: Vec<&str> = self
            .files
            .iter()
            // Refused for what it says (a duplicate's policies are known: the other file's).
            .filter(|(_, f)| f.parsed.is_err() && !f.ever_good)
            .map(|(name, _)| name.as_str())
            .collect();
        let unservable_because = match (self.readable == Some(true), unknown.is_empty()) {
            _ if self.served => None,
            (false, _) => Some(format!("{}: the policy directory cannot be read", self.dir.display())),
            (true, false) => Some(format!(
                "{} refused, and no good version of {} was seen since this control plane started: no policy is sent until {} fixed, so no workload gets fewer rules than its last good version",
                unknown.join(", "),
                if unknown.len() == 1 { "it" } else { "them" },
                if unknown.len() == 1 { "it is" } else { "they are" },
            )),
            (true, true) => None,
        };
        self.served |= unservable_because.is_none();
        Catalog {
            version,
            by_namespace,
            sources,
            readable: self.readable == Some(true),
            made_at: Some(std::time::Instant::now()),
            generation: 0,
            revision: self.revision.clone().unwrap_or(0),
            highest_revision: self.highest_revision,
            unservable_because,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, ns: &str, spec: &str) -> String {
        format!("apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
    }

    fn workload(ns: &str, app: &str) -> Workload {
        Workload {
            namespace: ns.into(),
            service_account: app.into(),
            labels: [("app".to_string(), app.to_string())].into(),
        }
    }

    const ORDERS: &str = "  selector: {matchLabels: {app: orders}}\n  mtls: STRICT\n  authorization:\n    rules:\n      - {name: reads, action: ALLOW, from: {principals: [\"spiffe://cluster.local/ns/shop/*\"]}, to: {methods: [GET], paths: [\"/orders*\"]}}\n  rateLimits:\n    - {name: r, key: source.principal, rate: 5, per: 1s, burst: 10}\n  inputValidation: {maxBodyBytes: 1024}\n";

    #[test]
    fn a_served_document_parses_back_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("orders.yaml"), policy("orders", "shop", ORDERS)).unwrap();
        let mut directory = PolicyDirectory::new(dir.path().into());
        let catalog = directory.scan().catalog.unwrap();
        let selection = catalog.select(&workload("shop", "orders"));
        assert_eq!(selection.entries.len(), 1);
        let document = std::str::from_utf8(&selection.entries[0].document).unwrap();
        let (again, errors) = parse_file(Path::new("x"), document);
        assert!(errors.is_empty(), "{errors:?}\n{document}");
        assert_eq!(&crate::yaml::to_string(&again[0].policy).unwrap(), document);
    }

    #[test]
    fn the_revision_file_is_read_with_the_policies_and_a_bad_one_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("orders.yaml"), policy("orders", "shop", ORDERS)).unwrap();
        let mut directory = PolicyDirectory::new(dir.path().into());
        let first = directory.scan().catalog.unwrap();
        assert_eq!((first.revision, first.select(&workload("shop", "orders")).revision), (0, 0), "no file: none");
        std::fs::write(dir.path().join(REVISION_FILE), "12\n").unwrap();
        let second = directory.scan().catalog.expect("a new revision alone is a new catalog");
        assert_eq!(second.select(&workload("shop", "orders")).revision, 12);
        assert_eq!(
            second.select(&workload("shop", "orders")).version,
            first.select(&workload("shop", "orders")).version
        );
        assert!(directory.scan().catalog.is_none(), "nothing changed");
        std::fs::write(dir.path().join(REVISION_FILE), "twelve").unwrap();
        let outcome = directory.scan();
        assert_eq!(outcome.rejected.len(), 1, "reported once");
        assert!(outcome.rejected[0].1[0].contains("not a revision"), "{:?}", outcome.rejected);
        let third = outcome.catalog.unwrap();
        assert_eq!(third.revision, 0);
        assert!(third.sources.iter().any(|s| s.file == REVISION_FILE && !s.errors.is_empty()));
        assert!(directory.scan().catalog.is_none() && directory.scan().rejected.is_empty());
    }

    #[test]
    fn a_served_document_keeps_the_hmac_secret_its_sidecars_need() {
        // The served document is the parsed policy serialised again: a field left out there is
        // lost to every sidecar (an HS256-only provider would be refused, whole snapshot and all).
        let dir = tempfile::tempdir().unwrap();
        let jwt = "  authentication:\n    requireJwt: true\n    jwt:\n      - issuer: https://auth.example\n        hmacSecret: {inline: \"0123456789abcdef0123456789abcdef\"}\n";
        std::fs::write(dir.path().join("orders.yaml"), policy("orders", "shop", &format!("{ORDERS}{jwt}"))).unwrap();
        let catalog = PolicyDirectory::new(dir.path().into()).scan().catalog.unwrap();
        let selection = catalog.select(&workload("shop", "orders"));
        let document = std::str::from_utf8(&selection.entries[0].document).unwrap();
        let (again, errors) = parse_file(Path::new("x"), document);
        assert!(errors.is_empty(), "{errors:?}\n{document}");
        let secret = again[0].policy.spec.authentication.as_ref().and_then(|a| a.jwt[0].hmac_secret.as_ref());
        assert_eq!(secret.and_then(|s| s.inline.as_deref()), Some("0123456789abcdef0123456789abcdef"), "{document}");
    }

    #[test]
    fn versions_follow_exactly_the_selected_set() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
        write("orders.yaml", &policy("orders", "shop", ORDERS));
        write("billing.yaml", &policy("billing", "shop", "  selector: {matchLabels: {app: billing}}\n"));
        let mut directory = PolicyDirectory::new(dir.path().into());
        let first = directory.scan().catalog.unwrap();
        let (orders, billing) = (workload("shop", "orders"), workload("shop", "billing"));
        let v_orders = first.select(&orders).version;
        let v_billing = first.select(&billing).version;
        assert_ne!(v_orders, v_billing);
        assert!(directory.scan().catalog.is_none(), "nothing changed");

        write(
            "billing.yaml",
            &policy("billing", "shop", "  selector: {matchLabels: {app: billing}}\n  mtls: STRICT\n"),
        );
        let second = directory.scan().catalog.unwrap();
        assert_eq!(second.select(&orders).version, v_orders, "an unrelated change keeps the version");
        assert_ne!(second.select(&billing).version, v_billing);
        assert!(second.select(&workload("other", "orders")).entries.is_empty());

        // Another replica reading the same files computes the same versions.
        let replica = PolicyDirectory::new(dir.path().into()).scan().catalog.unwrap();
        assert_eq!(replica.select(&orders).version, v_orders);
        assert_eq!(replica.version, second.version);
    }

    #[test]
    fn a_file_whose_policy_written_out_is_more_than_a_sidecar_reads_is_refused() {
        // About 870 KB of flow-style rules, within the file limit; written out in block style
        // (what is sent), more than 1 MiB.
        let rules: String = (0..12_000)
            .map(|i| format!("      - {{name: r{i}, action: DENY, to: {{paths: [/a{i}, /b{i}, /c{i}]}}}}\n"))
            .collect();
        let spec = format!("  selector: {{matchLabels: {{app: orders}}}}\n  authorization:\n    rules:\n{rules}");
        let text = policy("orders", "shop", &spec);
        assert!(text.len() < crate::yaml::Limits::FILE.max_bytes, "{}", text.len());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("orders.yaml"), text).unwrap();
        let outcome = PolicyDirectory::new(dir.path().into()).scan();
        let sent = outcome.catalog.as_ref().map(|c| {
            c.select(&workload("shop", "orders")).entries.iter().map(|e| e.document.len()).collect::<Vec<_>>()
        });
        assert!(!outcome.rejected.is_empty(), "{sent:?}");
        let (file, errors) = &outcome.rejected[0];
        assert_eq!(file, "orders.yaml");
        assert!(errors[0].contains("orders.yaml:3: policy shop/orders, as the control plane sends it"), "{errors:?}");
        assert!(errors[0].contains("more than the 1048576 a sidecar reads; split it"), "{errors:?}");
    }

    #[test]
    fn a_bad_file_keeps_its_last_good_version_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("orders.yaml");
        std::fs::write(&file, policy("orders", "shop", ORDERS)).unwrap();
        let mut directory = PolicyDirectory::new(dir.path().into());
        let good = directory.scan().catalog.unwrap();
        std::fs::write(&file, policy("orders", "shop", "  mtls: LOOSE\n")).unwrap();
        let outcome = directory.scan();
        assert_eq!(outcome.rejected.len(), 1);
        let error = &outcome.rejected[0].1[0];
        assert!(error.contains("orders.yaml:5:") && error.contains("spec.mtls"), "{error}");
        let bad = outcome.catalog.unwrap();
        assert_eq!(bad.select(&workload("shop", "orders")).version, good.select(&workload("shop", "orders")).version);
        assert_eq!(bad.sources[0].errors.len(), 1);

        // The same policy in a second file is refused; the first keeps it.
        std::fs::write(&file, policy("orders", "shop", ORDERS)).unwrap();
        std::fs::write(dir.path().join("copy.yaml"), policy("orders", "shop", "")).unwrap();
        let outcome = directory.scan();
        assert!(
            outcome.rejected.iter().any(|(f, e)| f == "copy.yaml"
                && e[0].contains("copy.yaml:3: metadata.name")
                && e[0].contains("also defined in orders.yaml:3")),
            "{:?}",
            outcome.rejected
        );

        // A removed file takes its policies with it.
        std::fs::remove_file(&file).unwrap();
        std::fs::remove_file(dir.path().join("copy.yaml")).unwrap();
        assert!(directory.scan().catalog.unwrap().is_empty());
    }

    /// A JWT provider is judged here as `palisade check` judges it (tester m3: an inline key set
    /// with no usable key was taken and pushed, every sidecar refused it, and a new sidecar
    /// never got a first policy); a key file, in the sidecars' pods, is theirs to judge.
    #[test]
    fn a_jwt_provider_is_judged_as_palisade_check_judges_it() {
        let provider = |jwks: &str| {
            format!("  authentication:\n    jwt:\n      - issuer: https://a.example\n        audiences: [orders]\n        jwks: {jwks}\n")
        };
        let dir = tempfile::tempdir().unwrap();
        let in_the_pod = provider("{file: /etc/palisade/not-on-this-host/jwks.json}");
        std::fs::write(dir.path().join("pod.yaml"), policy("pod", "shop", &in_the_pod)).unwrap();
        let mut directory = PolicyDirectory::new(dir.path().into());
        let outcome = directory.scan();
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        let catalog = outcome.catalog.unwrap();
        assert_eq!(catalog.select(&workload("shop", "orders")).entries.len(), 1, "the file's policy is served");
        std::fs::write(dir.path().join("empty.yaml"), policy("empty", "shop", &provider(r#"{inline: '{"keys":[]}'}"#)))
            .unwrap();
        let outcome = directory.scan();
        let refused: Vec<&String> = outcome.rejected.iter().map(|(file, _)| file).collect();
        assert_eq!(refused, ["empty.yaml"], "{:?}", outcome.rejected);
        assert!(outcome.rejected[0].1[0].contains("no usable key"), "{:?}", outcome.rejected);
    }

    #[test]
    fn a_file_whose_jwt_setup_clashes_with_another_files_is_refused_and_the_set_in_force_stays() {
        // b.yaml reads tokens from x-auth; an edit of a.yaml forwards a claim into x-auth, which
        // every sidecar both select would refuse (the token removed before it is verified).
        let jwt = |issuer: &str, extra: &str| {
            format!("  authentication:\n    jwt:\n      - issuer: {issuer}\n        audiences: [orders]\n        hmacSecret: {{inline: \"0123456789abcdef0123456789abcdef\"}}\n{extra}")
        };
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, policy("a", "shop", &jwt("https://a.example", ""))).unwrap();
        let reads = "        fromHeaders: [{name: x-auth}]\n";
        std::fs::write(dir.path().join("b.yaml"), policy("b", "shop", &jwt("https://b.example", reads))).unwrap();
        let mut directory = PolicyDirectory::new(dir.path().into());
        let good = directory.scan().catalog.unwrap();
        let orders = workload("shop", "orders");
        std::fs::write(
            &a,
            policy("a", "shop", &jwt("https://a.example", "        forwardClaims: [{claim: sub, header: x-auth}]\n")),
        )
        .unwrap();
        let outcome = directory.scan();
        assert_eq!(outcome.rejected.len(), 1, "{:?}", outcome.rejected);
        let (file, errors) = &outcome.rejected[0];
        assert_eq!(file, "a.yaml");
        assert!(
            errors[0].contains("a.yaml:7:1: spec.authentication.jwt[0]") && errors[0].contains("x-auth"),
            "{errors:?}"
        );
        assert!(errors[0].contains("shop/b"), "names the other policy: {errors:?}");
        let kept = outcome.catalog.unwrap();
        assert_eq!(kept.select(&orders).version, good.select(&orders).version, "the set in force stays");

        // Forwarded into another header: taken.
        std::fs::write(
            &a,
            policy("a", "shop", &jwt("https://a.example", "        forwardClaims: [{claim: sub, header: x-user}]\n")),
        )
        .unwrap();
        let outcome = directory.scan();
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        assert_ne!(outcome.catalog.unwrap().select(&orders).version, good.select(&orders).version);

        // Both in the directory from the start (a replica's first scan): the file that forwards
        // is refused and says why; the other waits for it, as a scan's files go in together.
        let fresh = tempfile::tempdir().unwrap();
        let forwards = jwt("https://a.example", "        forwardClaims: [{claim: sub, header: x-auth}]\n");
        std::fs::write(fresh.path().join("a.yaml"), policy("a", "shop", &forwards)).unwrap();
        std::fs::write(fresh.path().join("b.yaml"), policy("b", "shop", &jwt("https://b.example", reads))).unwrap();
        let outcome = PolicyDirectory::new(fresh.path().into()).scan();
        let rejected: BTreeMap<&str, &Vec<String>> = outcome.rejected.iter().map(|(f, e)| (f.as_str(), e)).collect();
        assert!(rejected.get("a.yaml").is_some_and(|e| e[0].contains("x-auth")), "{:?}", outcome.rejected);
        let held: Vec<&str> = outcome.held.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(held, ["b.yaml"], "{:?} {:?}", outcome.held, outcome.rejected);
    }

    #[test]
    fn a_refused_file_never_seen_good_holds_every_stream_until_it_is_fixed() {
        // A restarted replica finds a file that was good in the last one but is bad now: its
        // policies are unknown, so nothing is servable (an empty set would lift their rules).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("orders.yaml");
        std::fs::write(&file, policy("orders", "shop", "  mtls: LOOSE\n")).unwrap();
        std::fs::write(dir.path().join("billing.yaml"), policy("billing", "shop", "")).unwrap();
        let mut directory = PolicyDirectory::new(dir.path().into());
        let first = directory.scan().catalog.unwrap();
        assert!(!first.servable());
        let why = first.unservable_because.as_deref().unwrap();
        assert!(why.contains("orders.yaml refused") && !why.contains("billing"), "{why}");
        // Fixed: servable, and from then on a file that turns bad keeps its last good version.
        std::fs::write(&file, policy("orders", "shop", ORDERS)).unwrap();
        let fixed = directory.scan().catalog.unwrap();
        assert!(fixed.servable() && fixed.unservable_because.is_none());
        std::fs::write(&file, policy("orders", "shop", "  mtls: LOOSE\n")).unwrap();
        let again = directory.scan().catalog.unwrap();
        assert!(again.servable());
        assert_eq!(
            again.select(&workload("shop", "orders")).version,
            fixed.select(&workload("shop", "orders")).version
        );
        // A new file that arrives bad was never in force anywhere: it holds nothing back.
        std::fs::write(dir.path().join("new.yaml"), "not: [a policy").unwrap();
        assert!(directory.scan().catalog.unwrap().servable());
        // An unreadable directory at start is not servable either; nor is the empty default.
        let missing = PolicyDirectory::new(dir.path().join("nowhere")).scan().catalog.unwrap();
        assert!(!missing.servable() && missing.unservable_because.unwrap().contains("cannot be read"));
        assert!(!Catalog::default().servable());
    }

    #[test]
    fn a_rule_moved_into_a_file_that_is_refused_stays_where_it_was_until_that_file_is_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
        let deny = "  authorization:\n    rules:\n      - {name: no-admin, action: DENY, to: {paths: [\"/admin*\"]}}\n";
        write("a.yaml", &policy("a", "shop", deny));
        write("b.yaml", &policy("b", "shop", ""));
        let mut directory = PolicyDirectory::new(dir.path().into());
        let served = |catalog: &Catalog| -> String {
            let selection = catalog.select(&workload("shop", "orders"));
            selection.entries.iter().map(|e| String::from_utf8_lossy(&e.document).to_string()).collect()
        };
        assert!(served(&directory.scan().catalog.unwrap()).contains("no-admin"));

        // One update moves the rule from a.yaml into b.yaml, and b.yaml has a typo.
        write("a.yaml", &policy("a", "shop", ""));
        write("b.yaml", &policy("b", "shop", &format!("{deny}  mtls: LOOSE\n")));
        let outcome = directory.scan();
        let catalog = outcome.catalog.unwrap();
        assert!(served(&catalog).contains("no-admin"), "the rule vanished from both files: {}", served(&catalog));
        let errors: Vec<&String> = outcome.rejected.iter().flat_map(|(_, e)| e).collect();
        assert!(errors.iter().any(|e| e.contains("b.yaml") && e.contains("spec.mtls")), "{errors:?}");
        // a.yaml is held, not refused: its contents are good (no `rejected` count or event for it).
        assert_eq!(outcome.rejected.len(), 1, "{errors:?}");
        let held: Vec<&String> = outcome.held.iter().flat_map(|(_, e)| e).collect();
        assert!(held.iter().any(|e| e.contains("a.yaml: not taken yet") && e.contains("b.yaml")), "{held:?}");

        // b.yaml fixed: both files' new versions are taken together.
        write("b.yaml", &policy("b", "shop", deny));
        let catalog = directory.scan().catalog.unwrap();
        let text = served(&catalog);
        assert_eq!(text.matches("no-admin").count(), 1, "in b.yaml only now: {text}");
        assert!(
            catalog.sources.iter().all(|s| s.errors.is_empty()),
            "{:?}",
            catalog.sources.iter().map(|s| &s.errors).collect::<Vec<_>>()
        );

        // A later change of another file, while nothing is refused, is taken on its own.
        write("c.yaml", &policy("c", "shop", ""));
        assert!(directory.scan().rejected.is_empty());
    }

    #[test]
    fn a_policy_moved_to_another_file_stays_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
        let deny = "  authorization: {default: DENY}\n";
        write("b.yaml", &policy("orders-api", "shop", deny));
        let mut directory = PolicyDirectory::new(dir.path().into());
        assert_eq!(directory.scan().catalog.unwrap().len(), 1);

        // In one update the policy moves from b.yaml to a.yaml, and b.yaml gets another one.
        write("a.yaml", &policy("orders-api", "shop", deny));
        write("b.yaml", &policy("other", "shop", ""));
        let outcome = directory.scan();
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        let catalog = outcome.catalog.unwrap();
        assert_eq!(catalog.len(), 2);
        assert!(catalog.sources.iter().all(|s| s.errors.is_empty()), "{:?}", catalog.sources);

        // Defined in both: the file that had it keeps it; the other is refused until it stops.
        write("c.yaml", &policy("orders-api", "shop", deny));
        let outcome = directory.scan();
        assert_eq!(outcome.rejected.len(), 1);
        assert!(outcome.rejected[0].0 == "c.yaml" && outcome.rejected[0].1[0].contains("also defined in a.yaml"));
        assert_eq!(outcome.catalog.unwrap().len(), 2);
        // a.yaml drops it: c.yaml is taken without being touched.
        write("a.yaml", &policy("unrelated", "shop", ""));
        let catalog = directory.scan().catalog.unwrap();
        let c = catalog.sources.iter().find(|s| s.file == "c.yaml").unwrap();
        assert!(c.errors.is_empty() && c.policies == ["shop/orders-api"], "{c:?}");
        assert_eq!(catalog.len(), 3);

        // Twice in one file is refused too.
        write("d.yaml", &format!("{}---\n{}", policy("twice", "shop", ""), policy("twice", "shop", "")));
        let outcome = directory.scan();
        assert!(outcome.rejected.iter().any(|(f, e)| f == "d.yaml" && e[0].contains("defined twice")));
    }

    #[test]
    fn a_configmap_mount_reads_through_its_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mount = |generation: &str, text: &str| {
            let data = d.join(generation);
            std::fs::create_dir(&data).unwrap();
            std::fs::write(data.join("orders.yaml"), text).unwrap();
            let _ = std::fs::remove_file(d.join("..data_tmp"));
            std::os::unix::fs::symlink(generation, d.join("..data_tmp")).unwrap();
            std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        };
        mount("..2026_01", &policy("orders", "shop", ORDERS));
        std::os::unix::fs::symlink("..data/orders.yaml", d.join("orders.yaml")).unwrap();
        let mut directory = PolicyDirectory::new(d.into());
        let first = directory.scan().catalog.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first.sources.len(), 1, "dot-entries are not sources");
        mount("..2026_02", &policy("orders", "shop", "  mtls: STRICT\n"));
        let second = directory.scan().catalog.unwrap();
        assert_ne!(second.version, first.version);
    }

    /// Outside tester q3: every scan read and hashed every file (14% of a core for 33 MB of
    /// policies, four scans a second). A file whose metadata is as it was is not read again; one
    /// written, renamed over, or swapped under a ConfigMap's link is.
    #[test]
    fn files_whose_metadata_holds_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("orders.yaml"), policy("orders", "shop", ORDERS)).unwrap();
        std::fs::write(d.join("other.yaml"), policy("other", "shop", "  mtls: STRICT\n")).unwrap();
        let mut directory = PolicyDirectory::new(d.into());
        directory.stamp_settled = std::time::Duration::ZERO;
        let first = directory.scan().catalog.unwrap();
        let reads = directory.reads;
        assert!(reads >= 2, "{reads}");
        assert!(directory.scan().catalog.is_none(), "nothing changed");
        assert_eq!(directory.reads, reads, "nothing read again");
        // Rewritten in place with the same length: read again, and taken.
        let text = policy("orders", "shop", ORDERS).replace("rate: 5", "rate: 6");
        std::fs::write(d.join("orders.yaml"), &text).unwrap();
        let second = directory.scan().catalog.unwrap();
        assert_ne!(second.version, first.version);
        assert!(directory.reads > reads);
        // Replaced by a rename (an editor's save): a new inode.
        let reads = directory.reads;
        std::fs::write(d.join(".tmp"), policy("orders", "shop", ORDERS)).unwrap();
        std::fs::rename(d.join(".tmp"), d.join("orders.yaml")).unwrap();
        let third = directory.scan().catalog.unwrap();
        assert_eq!(third.version, first.version, "back to the first contents");
        assert!(directory.reads > reads);
        // A file read while its change time was recent is read again every time, however long
        // after: a write later in the same tick of a second-grained clock leaves the stamp as it
        // was (the review: one such edit was never taken).
        directory.stamp_settled = std::time::Duration::from_secs(3600);
        std::fs::write(d.join("other.yaml"), policy("other", "shop", "  mtls: PERMISSIVE\n")).unwrap();
        assert!(directory.scan().catalog.is_some());
        let reads = directory.reads;
        directory.stamp_settled = std::time::Duration::ZERO;
        assert!(directory.scan().catalog.is_none());
        assert_eq!(directory.reads, reads + 1, "the file read when it was fresh is read again");
        assert!(directory.scan().catalog.is_none());
        assert_eq!(directory.reads, reads + 1, "and once settled, no more");
    }
}
