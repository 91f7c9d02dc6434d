//! The policy parser (`palisade::policy::parse_file`) on arbitrary text: YAML syntax, document
//! structure, every field's value patterns. Nothing may panic, and whatever it accepts must
//! print without panicking either.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (located, _errors) = palisade::policy::parse_file(Path::new("fuzz.yaml"), text);
    for policy in &located {
        let _ = format!("{:?}", policy.policy);
    }
});
