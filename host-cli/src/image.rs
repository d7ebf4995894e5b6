//! Model space → pixels, and PNG / GIF output.
//!
//! Pixels follow diffusers' `DDPMPipeline`: `(x / 2 + 0.5).clamp(0, 1)`, then `numpy_to_pil`'s
//! `(v * 255).round()` (numpy: half to even) to 8 bits. One channel is greyscale, three are RGB.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One model-space value → 8-bit pixel.
pub fn to_u8(x: f32) -> u8 {
    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0);
    (v * 255.0).round_ties_even() as u8
}

/// A batch of images in model space, `[n, c, h, w]`.
pub struct Batch<'a> {
    pub data: &'a [f32],
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// An 8-bit image, interleaved channels.
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Batch<'_> {
    fn check(&self) -> Result<()> {
        if self.c != 1 && self.c != 3 {
            bail!("images have {} channels; PNG/GIF output needs 1 (grey) or 3 (RGB); use --npy", self.c);
        }
        if self.data.len() != self.n * self.c * self.h * self.w {
            bail!("internal: batch size mismatch");
        }
        Ok(())
    }

    /// Image `i` as pixels.
    pub fn image(&self, i: usize) -> Result<Pixels> {
        self.check()?;
        let plane = self.h * self.w;
        let img = &self.data[i * self.c * plane..(i + 1) * self.c * plane];
        let mut data = vec![0u8; plane * self.c];
        for p in 0..plane {
            for ch in 0..self.c {
                data[p * self.c + ch] = to_u8(img[ch * plane + p]);
            }
        }
        Ok(Pixels { width: self.w, height: self.h, channels: self.c, data })
    }

    /// All images in a near-square grid with a 2-pixel black gap.
    pub fn grid(&self) -> Result<Pixels> {
        self.check()?;
        let cols = (self.n as f64).sqrt().ceil().max(1.0) as usize;
        let rows = self.n.div_ceil(cols);
        let gap = 2;
        let (gw, gh) = (cols * self.w + (cols + 1) * gap, rows * self.h + (rows + 1) * gap);
        let mut data = vec![0u8; gw * gh * self.c];
        for i in 0..self.n {
            let img = self.image(i)?;
            let (x0, y0) = (gap + (i % cols) * (self.w + gap), gap + (i / cols) * (self.h + gap));
            for y in 0..self.h {
                let src = &img.data[y * self.w * self.c..(y + 1) * self.w * self.c];
                let at = ((y0 + y) * gw + x0) * self.c;
                data[at..at + src.len()].copy_from_slice(src);
            }
        }
        Ok(Pixels { width: gw, height: gh, channels: self.c, data })
    }
}

/// Writes a PNG.
pub fn write_png(path: &Path, p: &Pixels) -> Result<()> {
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(f), p.width as u32, p.height as u32);
    enc.set_color(if p.channels == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().with_context(|| format!("cannot write {}", path.display()))?;
    w.write_image_data(&p.data).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// An animated GIF being written frame by frame.
pub struct Gif {
    enc: gif::Encoder<BufWriter<File>>,
    width: u16,
    height: u16,
}

impl Gif {
    pub fn create(path: &Path, width: usize, height: usize) -> Result<Self> {
        let (w, h) = (u16::try_from(width)?, u16::try_from(height)?);
        let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut enc = gif::Encoder::new(BufWriter::new(f), w, h, &[]).context("cannot start the GIF")?;
        enc.set_repeat(gif::Repeat::Infinite)?;
        Ok(Gif { enc, width: w, height: h })
    }

    /// Adds a frame shown for `delay_cs` hundredths of a second.
    pub fn frame(&mut self, p: &Pixels, delay_cs: u16) -> Result<()> {
        let mut frame = if p.channels == 1 {
            // A 256-level grey palette keeps greyscale frames exact.
            let palette: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
            let mut f = gif::Frame::from_indexed_pixels(self.width, self.height, p.data.clone(), None);
            f.palette = Some(palette);
            f
        } else {
            gif::Frame::from_rgb_speed(self.width, self.height, &p.data, 10)
        };
        frame.delay = delay_cs;
        self.enc.write_frame(&frame).context("cannot write a GIF frame")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_mapping_matches_diffusers() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(0.0), 128); // 127.5: half to even
        assert_eq!(to_u8(2.0 * 126.5 / 255.0 - 1.0), 126); // 126.5: half to even, like numpy
        assert_eq!(to_u8(5.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
    }
}
