//! Any JSON object given to the scheduler config reader yields a schedule or an error, never a panic. A
//! schedule it accepts is one the blob can hold: its record parses back unchanged with the validator the
//! target uses (`Schedule::parse`), and a `trained_betas` schedule has one beta per training timestep.
#![no_main]

use ddpm_convert::diffusers::scheduler;
use ddpm_convert::graph::Graph;
use ddpm_core::format::{BetaSchedule, Schedule};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(data) else { return };
    let mut graph = Graph::default();
    let Ok((s, _notes)) = scheduler::from_json(&m, &mut graph) else { return };
    assert_eq!(Schedule::parse(&s.encode()), Ok(s), "schedule record does not round-trip");
    if s.beta_schedule == BetaSchedule::TrainedBetas {
        let t = &graph.tensors[s.trained_betas_tensor as usize];
        assert_eq!(t.data.len(), s.num_train_timesteps as usize);
    }
});
