use ddpm_core::ops::{conv2d_pad, conv2d_using, Conv2dShape};
use ddpm_core::Kernels;
fn main() {
    for (ci, h, co, k, s) in [
        (128usize, 32usize, 128usize, 3usize, 1usize),
        (256, 16, 256, 3, 1),
        (256, 8, 256, 3, 1),
        (256, 4, 256, 3, 1),
        (384, 32, 128, 1, 1),
        (128, 32, 128, 3, 2),
    ] {
        let p = if k == 3 { 1 } else { 0 };
        let ho = (h + 2 * p - k) / s + 1;
        let g = Conv2dShape { ci, h, w: h, co, kh: k, kw: k, stride: s, pad: [p; 4], ho, wo: ho };
        let (a, b, c) = g.scratch_shape();
        let x = vec![0.5f32; ci * h * h];
        let w = vec![0.25f32; co * ci * k * k];
        let bias = vec![0.0f32; co];
        let mut xp = vec![0f32; a * b * c];
        conv2d_pad(&mut xp, &x, &g);
        let mut out = vec![0f32; co * ho * ho];
        for kern in [Kernels::Fast, Kernels::Exact] {
            conv2d_using(kern, &mut out, &xp, &w, &bias, &g);
            let n = 10;
            let t = std::time::Instant::now();
            for _ in 0..n {
                conv2d_using(kern, &mut out, &xp, &w, &bias, &g);
            }
            let dt = t.elapsed().as_secs_f64() / n as f64;
            let fl = 2.0 * (co * ho * ho * ci * k * k) as f64;
            println!("{ci}->{co} {h}x{h} k{k} s{s} {kern:?}: {:.3} ms {:.1} GFLOP/s", dt * 1e3, fl / dt / 1e9);
        }
    }
}
