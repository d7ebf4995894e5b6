//! The 64-byte schedule record: diffusers' scheduler options, and the enums of its coded options.

use super::{read_u32, write_u32, Field};
use crate::error::BlobError;

/// Size of the schedule record.
pub const RECORD_BYTES: usize = field::RESCALE_BETAS_ZERO_SNR.end;

/// Where each field of the schedule record lives (one little-endian word each).
pub mod field {
    use crate::format::Field;

    /// `num_train_timesteps`, u32 (> 0).
    pub const NUM_TRAIN_TIMESTEPS: Field = 0..4;
    /// `beta_schedule`, [`super::BetaSchedule`] code.
    pub const BETA_SCHEDULE: Field = 4..8;
    /// `beta_start`, f32.
    pub const BETA_START: Field = 8..12;
    /// `beta_end`, f32.
    pub const BETA_END: Field = 12..16;
    /// `prediction_type`, [`super::PredictionType`] code.
    pub const PREDICTION_TYPE: Field = 16..20;
    /// `variance_type`, [`super::VarianceType`] code.
    pub const VARIANCE_TYPE: Field = 20..24;
    /// `clip_sample`, flag.
    pub const CLIP_SAMPLE: Field = 24..28;
    /// `clip_sample_range`, f32.
    pub const CLIP_SAMPLE_RANGE: Field = 28..32;
    /// `thresholding`, flag.
    pub const THRESHOLDING: Field = 32..36;
    /// `dynamic_thresholding_ratio`, f32.
    pub const DYNAMIC_THRESHOLDING_RATIO: Field = 36..40;
    /// `sample_max_value`, f32.
    pub const SAMPLE_MAX_VALUE: Field = 40..44;
    /// `timestep_spacing`, [`super::TimestepSpacing`] code.
    pub const TIMESTEP_SPACING: Field = 44..48;
    /// `steps_offset`, u32.
    pub const STEPS_OFFSET: Field = 48..52;
    /// Index of the trained-betas tensor, u32 (read when `beta_schedule` is `trained_betas`).
    pub const TRAINED_BETAS_TENSOR: Field = 52..56;
    /// `set_alpha_to_one` (DDIM), flag.
    pub const SET_ALPHA_TO_ONE: Field = 56..60;
    /// `rescale_betas_zero_snr`, flag.
    pub const RESCALE_BETAS_ZERO_SNR: Field = 60..64;
}

/// Declares a coded scheduler option: the enum, its codes and its diffusers names, once.
macro_rules! coded_option {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every option, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// The code stored in the schedule record.
            pub const fn code(self) -> u32 {
                match self {
                    $($name::$variant => $code,)*
                }
            }
            /// Decodes a stored code.
            pub const fn from_code(c: u32) -> Option<Self> {
                match c {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }
            /// diffusers' name of the option.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
            /// The option diffusers calls `name`.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|o| o.name() == name)
            }
        }
    };
}

coded_option! {
    /// `beta_schedule`: how the betas are made.
    BetaSchedule {
        /// Evenly spaced from `beta_start` to `beta_end` (Ho et al. 2020).
        Linear = 0, "linear";
        /// Evenly spaced square roots, squared (latent diffusion).
        ScaledLinear = 1, "scaled_linear";
        /// The cosine schedule of Nichol & Dhariwal 2021 (max beta 0.999).
        SquaredcosCapV2 = 2, "squaredcos_cap_v2";
        /// A sigmoid from `beta_start` to `beta_end` (GeoDiff).
        Sigmoid = 3, "sigmoid";
        /// An explicit table, stored as a tensor of the blob.
        TrainedBetas = 4, "trained_betas";
    }
}

coded_option! {
    /// `prediction_type`: what the network predicts.
    PredictionType {
        /// The noise ε.
        Epsilon = 0, "epsilon";
        /// The clean sample x₀.
        Sample = 1, "sample";
        /// v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022).
        VPrediction = 2, "v_prediction";
    }
}

coded_option! {
    /// `variance_type`: the DDPM posterior variance σ_t².
    VarianceType {
        /// β̃_t, the posterior variance.
        FixedSmall = 0, "fixed_small";
        /// β̃_t, computed through its logarithm.
        FixedSmallLog = 1, "fixed_small_log";
        /// β_t.
        FixedLarge = 2, "fixed_large";
        /// β_t, computed through its logarithm.
        FixedLargeLog = 3, "fixed_large_log";
        /// The network's second half of channels is the variance.
        Learned = 4, "learned";
        /// The network interpolates between log β̃_t and log β_t (Nichol & Dhariwal 2021).
        LearnedRange = 5, "learned_range";
    }
}

coded_option! {
    /// `timestep_spacing`: which training timesteps a K-step sampler visits.
    TimestepSpacing {
        /// `t = i·(T/K) + offset`.
        Leading = 0, "leading";
        /// `K` points evenly over `0..T−1`, rounded.
        Linspace = 1, "linspace";
        /// From `T` down in steps of `T/K`, minus one.
        Trailing = 2, "trailing";
    }
}

impl VarianceType {
    /// Whether the network predicts the variance (its output has twice the sample's channels).
    pub const fn is_learned(self) -> bool {
        matches!(self, VarianceType::Learned | VarianceType::LearnedRange)
    }
}

/// The noise schedule and sampler defaults stored in the blob (diffusers' scheduler options).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// `num_train_timesteps`.
    pub num_train_timesteps: u32,
    /// `beta_schedule`.
    pub beta_schedule: BetaSchedule,
    /// `beta_start`.
    pub beta_start: f32,
    /// `beta_end`.
    pub beta_end: f32,
    /// `prediction_type`.
    pub prediction_type: PredictionType,
    /// `variance_type`.
    pub variance_type: VarianceType,
    /// `clip_sample`.
    pub clip_sample: bool,
    /// `clip_sample_range`.
    pub clip_sample_range: f32,
    /// `thresholding`.
    pub thresholding: bool,
    /// `dynamic_thresholding_ratio`.
    pub dynamic_thresholding_ratio: f32,
    /// `sample_max_value`.
    pub sample_max_value: f32,
    /// `timestep_spacing`.
    pub timestep_spacing: TimestepSpacing,
    /// `steps_offset`.
    pub steps_offset: u32,
    /// Tensor holding the trained betas (used when `beta_schedule` is `trained_betas`).
    pub trained_betas_tensor: u32,
    /// `set_alpha_to_one` (DDIM).
    pub set_alpha_to_one: bool,
    /// `rescale_betas_zero_snr`: rescale the betas so that the last timestep has zero SNR.
    pub rescale_betas_zero_snr: bool,
}

impl Schedule {
    /// diffusers' `DDPMScheduler()` defaults (Ho et al. 2020: 1000 linear betas from 1e-4 to 0.02).
    pub const DDPM_DEFAULT: Schedule = Schedule {
        num_train_timesteps: 1000,
        beta_schedule: BetaSchedule::Linear,
        beta_start: 1e-4,
        beta_end: 0.02,
        prediction_type: PredictionType::Epsilon,
        variance_type: VarianceType::FixedSmall,
        clip_sample: true,
        clip_sample_range: 1.0,
        thresholding: false,
        dynamic_thresholding_ratio: 0.995,
        sample_max_value: 1.0,
        timestep_spacing: TimestepSpacing::Leading,
        steps_offset: 0,
        trained_betas_tensor: 0,
        set_alpha_to_one: true,
        rescale_betas_zero_snr: false,
    };

    /// Parses and checks a schedule record (`r` at least [`RECORD_BYTES`] long): `num_train_timesteps` > 0,
    /// known option codes, finite floats, flags 0 or 1.
    pub fn parse(r: &[u8]) -> Result<Schedule, BlobError> {
        let bad = BlobError::BadField;
        let w = |f: Field| read_u32(r, f);
        let float = |f: Field| f32::from_bits(w(f));
        let flag = |f: Field| match w(f) {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("schedule flag")),
        };
        if w(field::NUM_TRAIN_TIMESTEPS) == 0 {
            return Err(bad("num_train_timesteps"));
        }
        let beta_schedule = BetaSchedule::from_code(w(field::BETA_SCHEDULE)).ok_or(bad("beta_schedule"))?;
        let floats = [
            field::BETA_START,
            field::BETA_END,
            field::CLIP_SAMPLE_RANGE,
            field::DYNAMIC_THRESHOLDING_RATIO,
            field::SAMPLE_MAX_VALUE,
        ];
        if !floats.into_iter().all(|f| float(f).is_finite()) {
            return Err(bad("schedule float"));
        }
        let prediction_type = PredictionType::from_code(w(field::PREDICTION_TYPE)).ok_or(bad("prediction_type"))?;
        let variance_type = VarianceType::from_code(w(field::VARIANCE_TYPE)).ok_or(bad("variance_type"))?;
        let (clip_sample, thresholding) = (flag(field::CLIP_SAMPLE)?, flag(field::THRESHOLDING)?);
        let (set_alpha_to_one, rescale) = (flag(field::SET_ALPHA_TO_ONE)?, flag(field::RESCALE_BETAS_ZERO_SNR)?);
        let timestep_spacing = TimestepSpacing::from_code(w(field::TIMESTEP_SPACING)).ok_or(bad("timestep_spacing"))?;
        Ok(Schedule {
            num_train_timesteps: w(field::NUM_TRAIN_TIMESTEPS),
            beta_schedule,
            beta_start: float(field::BETA_START),
            beta_end: float(field::BETA_END),
            prediction_type,
            variance_type,
            clip_sample,
            clip_sample_range: float(field::CLIP_SAMPLE_RANGE),
            thresholding,
            dynamic_thresholding_ratio: float(field::DYNAMIC_THRESHOLDING_RATIO),
            sample_max_value: float(field::SAMPLE_MAX_VALUE),
            timestep_spacing,
            steps_offset: w(field::STEPS_OFFSET),
            trained_betas_tensor: w(field::TRAINED_BETAS_TENSOR),
            set_alpha_to_one,
            rescale_betas_zero_snr: rescale,
        })
    }

    /// Writes the record into `r` (at least [`RECORD_BYTES`] long).
    pub fn emit(&self, r: &mut [u8]) {
        write_u32(r, field::NUM_TRAIN_TIMESTEPS, self.num_train_timesteps);
        write_u32(r, field::BETA_SCHEDULE, self.beta_schedule.code());
        write_u32(r, field::BETA_START, self.beta_start.to_bits());
        write_u32(r, field::BETA_END, self.beta_end.to_bits());
        write_u32(r, field::PREDICTION_TYPE, self.prediction_type.code());
        write_u32(r, field::VARIANCE_TYPE, self.variance_type.code());
        write_u32(r, field::CLIP_SAMPLE, u32::from(self.clip_sample));
        write_u32(r, field::CLIP_SAMPLE_RANGE, self.clip_sample_range.to_bits());
        write_u32(r, field::THRESHOLDING, u32::from(self.thresholding));
        write_u32(r, field::DYNAMIC_THRESHOLDING_RATIO, self.dynamic_thresholding_ratio.to_bits());
        write_u32(r, field::SAMPLE_MAX_VALUE, self.sample_max_value.to_bits());
        write_u32(r, field::TIMESTEP_SPACING, self.timestep_spacing.code());
        write_u32(r, field::STEPS_OFFSET, self.steps_offset);
        write_u32(r, field::TRAINED_BETAS_TENSOR, self.trained_betas_tensor);
        write_u32(r, field::SET_ALPHA_TO_ONE, u32::from(self.set_alpha_to_one));
        write_u32(r, field::RESCALE_BETAS_ZERO_SNR, u32::from(self.rescale_betas_zero_snr));
    }

    /// The record's bytes.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut r = [0u8; RECORD_BYTES];
        self.emit(&mut r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_round_trips_through_its_code_and_name() {
        for &b in BetaSchedule::ALL {
            assert_eq!((BetaSchedule::from_code(b.code()), BetaSchedule::from_name(b.name())), (Some(b), Some(b)));
        }
        for &p in PredictionType::ALL {
            assert_eq!((PredictionType::from_code(p.code()), PredictionType::from_name(p.name())), (Some(p), Some(p)));
        }
        for &v in VarianceType::ALL {
            assert_eq!((VarianceType::from_code(v.code()), VarianceType::from_name(v.name())), (Some(v), Some(v)));
        }
        for &t in TimestepSpacing::ALL {
            assert_eq!(
                (TimestepSpacing::from_code(t.code()), TimestepSpacing::from_name(t.name())),
                (Some(t), Some(t))
            );
        }
        assert_eq!(BetaSchedule::from_code(5), None);
        assert_eq!(VarianceType::from_name("fixed"), None);
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let s = Schedule {
            beta_schedule: BetaSchedule::TrainedBetas,
            prediction_type: PredictionType::VPrediction,
            variance_type: VarianceType::LearnedRange,
            timestep_spacing: TimestepSpacing::Trailing,
            steps_offset: 1,
            trained_betas_tensor: 7,
            clip_sample: false,
            thresholding: true,
            rescale_betas_zero_snr: true,
            ..Schedule::DDPM_DEFAULT
        };
        assert_eq!(Schedule::parse(&s.encode()), Ok(s));
        assert_eq!(Schedule::parse(&Schedule::DDPM_DEFAULT.encode()), Ok(Schedule::DDPM_DEFAULT));
    }

    #[test]
    fn each_field_refuses_corruption() {
        let bad = BlobError::BadField;
        let cases = [
            (field::NUM_TRAIN_TIMESTEPS, 0, bad("num_train_timesteps")),
            (field::BETA_SCHEDULE, 5, bad("beta_schedule")),
            (field::BETA_START, f32::NAN.to_bits(), bad("schedule float")),
            (field::BETA_END, f32::INFINITY.to_bits(), bad("schedule float")),
            (field::CLIP_SAMPLE_RANGE, f32::NAN.to_bits(), bad("schedule float")),
            (field::DYNAMIC_THRESHOLDING_RATIO, f32::NAN.to_bits(), bad("schedule float")),
            (field::SAMPLE_MAX_VALUE, f32::NAN.to_bits(), bad("schedule float")),
            (field::PREDICTION_TYPE, 3, bad("prediction_type")),
            (field::VARIANCE_TYPE, 6, bad("variance_type")),
            (field::CLIP_SAMPLE, 2, bad("schedule flag")),
            (field::THRESHOLDING, 2, bad("schedule flag")),
            (field::TIMESTEP_SPACING, 3, bad("timestep_spacing")),
            (field::SET_ALPHA_TO_ONE, 2, bad("schedule flag")),
            (field::RESCALE_BETAS_ZERO_SNR, 2, bad("schedule flag")),
        ];
        for (f, v, want) in cases {
            let mut r = Schedule::DDPM_DEFAULT.encode();
            write_u32(&mut r, f.clone(), v);
            assert_eq!(Schedule::parse(&r), Err(want), "field {f:?}");
        }
    }
}
