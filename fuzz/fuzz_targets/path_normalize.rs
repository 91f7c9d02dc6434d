//! The path normaliser (`normalize`, `match_form`) on arbitrary paths. Nothing may panic, and
//! what it accepts must be what a rule can be judged against: absolute, without empty, `.` or
//! `..` segments, without control bytes, encoded separators or a `%25` that a second decoding
//! would turn into something else, and a fixed point (normalising it again changes nothing), so
//! the policy and the app see one path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::policy::{match_form, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let Ok(normal) = normalize(path) else { return };
    let normal: &str = &normal;
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    let again = normalize(normal).unwrap_or_else(|e| panic!("{path:?} -> {normal:?} refused again: {e}"));
    assert_eq!(&*again, normal, "not a fixed point: {path:?}");
    let form = match_form(normal);
    assert!(form == "/" || !form.ends_with('/'), "{form:?}");
    for segment in form.split('/').skip(1) {
        assert!(form == "/" || !matches!(segment, "" | "." | ".."), "{path:?} -> {form:?}");
    }
    let upper = normal.to_ascii_uppercase();
    assert!(!upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%00"), "{normal:?}");
    assert!(!has_double_encoding(&upper), "{normal:?}");
    assert!(normal.bytes().all(|b| b > 0x20 && b < 0x7f), "{normal:?}");
});

fn has_double_encoding(upper: &str) -> bool {
    upper.as_bytes().windows(5).any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit())
}
