//! Any byte string given to the `.npy` reader yields an array or an error, never a panic; an array holds
//! exactly `shape.iter().product()` elements.
#![no_main]

use ddpm_convert::load::parse_npy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((shape, values)) = parse_npy(data) else { return };
    assert_eq!(Some(values.len()), shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)));
});
