//! The diffusers family: `UNet2DModel` configs (`config.json`, or inferred from the tensors), scheduler configs
//! (`DDPMScheduler`/`DDIMScheduler` options), and the UNet2DModel program builder.

pub mod config;
pub mod scheduler;
pub mod unet2d;
