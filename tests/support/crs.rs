//! The OWASP CRS regression tests (go-ftw YAML) and libinjection's lists in
//! `../shared/corpora`, as data: shared by the WAF's own corpus test (`src/waf/corpus.rs`, the
//! detectors alone) and `tests/waf_efficacy.rs` (the same requests through a running sidecar),
//! so both read and score the corpora the same way.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Paranoia level of each CRS rule in the corpus (tag `paranoia-level/N` in the rule files of
/// coreruleset @ 2cbd1d0, the commit the tests come from). Rules not listed count as PL1.
pub const RULE_LEVELS: &[(u32, u8)] = &[
    (920100, 1),
    (920120, 1),
    (920160, 1),
    (920170, 1),
    (920180, 1),
    (920190, 1),
    (920200, 2),
    (920202, 4),
    (920210, 1),
    (920230, 2),
    (920240, 2),
    (920250, 1),
    (920260, 1),
    (920270, 1),
    (920272, 3),
    (920274, 4),
    (920280, 1),
    (920290, 1),
    (920300, 3),
    (920310, 1),
    (920320, 2),
    (920330, 1),
    (920340, 1),
    (920350, 1),
    (920360, 1),
    (920370, 1),
    (920380, 1),
    (920390, 1),
    (920400, 1),
    (920410, 1),
    (920420, 1),
    (920430, 1),
    (920440, 1),
    (920450, 1),
    (920460, 4),
    (920470, 1),
    (920480, 1),
    (920490, 3),
    (920500, 1),
    (920510, 3),
    (920520, 1),
    (920530, 1),
    (920540, 1),
    (920600, 1),
    (920610, 1),
    (920620, 1),
    (920640, 1),
    (920650, 2),
    (920660, 1),
    (921110, 1),
    (921120, 1),
    (921130, 1),
    (921140, 1),
    (921150, 1),
    (921160, 1),
    (921180, 3),
    (921190, 1),
    (921200, 1),
    (921210, 3),
    (921220, 4),
    (921230, 3),
    (921240, 1),
    (921250, 1),
    (921422, 2),
    (930100, 1),
    (930110, 1),
    (930120, 1),
    (930130, 1),
    (930140, 1),
    (931100, 1),
    (931110, 1),
    (931120, 1),
    (931130, 2),
    (932120, 1),
    (932130, 1),
    (932140, 1),
    (932160, 1),
    (932170, 1),
    (932180, 1),
    (932190, 3),
    (932200, 2),
    (932206, 2),
    (932210, 2),
    (932220, 2),
    (932230, 1),
    (932232, 3),
    (932236, 2),
    (932238, 3),
    (932240, 2),
    (932250, 1),
    (932260, 1),
    (932270, 1),
    (932280, 1),
    (932290, 3),
    (932300, 2),
    (932310, 2),
    (932320, 2),
    (932330, 1),
    (932340, 1),
    (932350, 3),
    (932370, 1),
    (932380, 1),
    (932390, 2),
    (933100, 1),
    (933110, 1),
    (933120, 1),
    (933130, 1),
    (933140, 1),
    (933150, 1),
    (933152, 2),
    (933160, 1),
    (933170, 1),
    (933180, 1),
    (933190, 3),
    (933200, 1),
    (933210, 1),
    (933220, 1),
    (934100, 1),
    (934110, 1),
    (934120, 2),
    (934130, 1),
    (934140, 2),
    (934150, 1),
    (934160, 1),
    (934170, 1),
    (934180, 2),
    (934190, 1),
    (934200, 1),
    (934210, 3),
    (934220, 2),
    (941100, 1),
    (941110, 1),
    (941120, 1),
    (941130, 1),
    (941140, 1),
    (941150, 2),
    (941160, 1),
    (941170, 1),
    (941180, 1),
    (941190, 1),
    (941200, 1),
    (941210, 1),
    (941220, 1),
    (941230, 1),
    (941240, 1),
    (941250, 1),
    (941260, 1),
    (941270, 1),
    (941280, 1),
    (941290, 1),
    (941300, 1),
    (941310, 1),
    (941320, 2),
    (941330, 2),
    (941340, 2),
    (941350, 1),
    (941360, 1),
    (941370, 1),
    (941380, 2),
    (941390, 1),
    (941400, 1),
    (942100, 1),
    (942120, 2),
    (942130, 2),
    (942140, 1),
    (942150, 2),
    (942152, 2),
    (942160, 1),
    (942170, 1),
    (942180, 2),
    (942190, 1),
    (942200, 2),
    (942210, 2),
    (942220, 1),
    (942230, 1),
    (942240, 1),
    (942250, 1),
    (942260, 2),
    (942270, 1),
    (942280, 1),
    (942290, 1),
    (942300, 2),
    (942310, 2),
    (942320, 1),
    (942330, 2),
    (942340, 2),
    (942350, 1),
    (942360, 1),
    (942362, 2),
    (942370, 2),
    (942380, 2),
    (942390, 2),
    (942400, 2),
    (942410, 2),
    (942420, 3),
    (942430, 2),
    (942432, 4),
    (942440, 2),
    (942450, 2),
    (942460, 3),
    (942470, 2),
    (942480, 2),
    (942490, 3),
    (942500, 1),
    (942510, 2),
    (942520, 2),
    (942522, 2),
    (942530, 3),
    (942540, 1),
    (942550, 1),
    (942560, 1),
    (944100, 1),
    (944110, 1),
    (944120, 1),
    (944130, 1),
    (944140, 1),
    (944150, 1),
    (944152, 4),
    (944200, 2),
    (944210, 2),
    (944240, 2),
    (944250, 2),
    (944260, 2),
    (944300, 3),
];

pub fn rule_level(rule: u32) -> u8 {
    RULE_LEVELS.iter().find(|(r, _)| *r == rule).map_or(1, |(_, l)| *l)
}

pub fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora")
}

#[derive(Deserialize)]
pub struct RuleFile {
    pub rule_id: u32,
    pub tests: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    pub test_id: u32,
    #[serde(default)]
    pub desc: Option<String>,
    pub stages: Vec<Stage>,
}

#[derive(Deserialize)]
pub struct Stage {
    pub input: Input,
    #[serde(default)]
    pub output: Option<Output>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Int(i64),
}

impl Scalar {
    pub fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
        }
    }
}

#[derive(Deserialize, Clone)]
pub struct Input {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, Scalar>>,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub encoded_request: Option<String>,
}

#[derive(Deserialize)]
pub struct Output {
    #[serde(default)]
    pub log: Option<Log>,
}

#[derive(Deserialize)]
pub struct Log {
    #[serde(default)]
    pub expect_ids: Option<Vec<u32>>,
}

pub fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Tests whose description says "negative" or "false positive" for one rule but whose payload
/// attacks another family (an `alert()` call, `/bin/cat /etc/shadow`, a sqlmap UNION): scored
/// neither as attacks nor as benign. Reviewed one by one.
pub const ATTACKS_MARKED_BENIGN: &[(u32, u32)] = &[
    (932230, 18), // <!--#exec cmd="/bin/cat /etc/shadow"-->
    (932230, 19),
    (932230, 20), // \ncat /etc/passwd;
    (932230, 21),
    (932230, 23), // () { :;}; /bin/bash -c "ftp ..." (Shellshock)
    (932250, 1),  // tar -xzf /var/www/exfiltrate.tar.gz /etc
    (941310, 8),  // ¼script¾alert(¢XSS¢)
    (941310, 9),
    (942360, 30), // '||(select(pg_sleep(15))where(true))||'
    (942360, 31), // UNION ALL SELECT NULL,NULL,CONCAT(...)-- sqCV
    (942522, 5),  // 'or'1
    (933100, 81), // <?xphp system('id'); ?> (no PHP tag, but a PHP call CRS's 933160 reads)
    // "Negative" for 934110's list of metadata paths, yet the metadata service all the same (CRS's
    // 931100 catches the second as an address in a URL).
    (934110, 6),  // 169.254.169.254/latest/user-data (scheme-less: libraries add http://)
    (934110, 7),  // http://169.254.169.254/latest
    (934110, 8),  // http://metadata.google.internal
    (934120, 52), // http:0xA9.0xFE.0xA9, inet_aton's 169.254.0.169: link-local, in hexadecimal
];

pub fn is_benign(desc: &str) -> bool {
    let d = desc.to_ascii_lowercase();
    ["false positive", "false-positive", "falsepositive", "legitimate", "negative", "benign"]
        .iter()
        .any(|k| d.contains(k))
}

pub fn family(rule: u32) -> &'static str {
    match rule / 1000 {
        920 | 921 => "protocol (920, 921)",
        930 => "traversal/LFI (930)",
        931 => "RFI (931)",
        932 => "command injection (932)",
        933 => "PHP (933)",
        934 => "generic and SSRF (934)",
        941 => "XSS (941)",
        942 => "SQLi (942)",
        944 => "Java (944)",
        _ => "other",
    }
}

/// Every CRS rule file, in a stable order.
pub fn rule_files() -> Vec<RuleFile> {
    let root = corpora().join("crs-regression");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e} (the corpora live in ../shared/corpora)", root.display()))
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// `Some(true)` for an attack (a rule must catch it), `Some(false)` for a request described as
/// benign, `None` for what is neither (scored as nothing).
pub fn is_attack(rule_id: u32, case: &Case, stage: &Stage) -> Option<bool> {
    let expects = stage.output.as_ref().and_then(|o| o.log.as_ref()).and_then(|l| l.expect_ids.as_ref());
    if expects.is_some_and(|ids| !ids.is_empty()) {
        return Some(true);
    }
    let benign =
        case.desc.as_deref().is_some_and(is_benign) && !ATTACKS_MARKED_BENIGN.contains(&(rule_id, case.test_id));
    benign.then_some(false)
}

/// The payloads of libinjection's lists whose file names start with `prefix` (`sqli`, `xss`,
/// `false`), each URL-decoded with `+` as a space, as its own harness does.
pub fn list_payloads(prefix: &str) -> Vec<Vec<u8>> {
    let dir = corpora().join("libinjection");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".txt"))
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let text = std::fs::read(&path).unwrap();
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() && !line.starts_with(b"#") {
                out.push(form_decode(line));
            }
        }
    }
    out
}

fn form_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Every byte but the unreserved ones percent-encoded: a payload as a query value.
pub fn percent_encode(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len() * 3);
    for &b in v {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}
