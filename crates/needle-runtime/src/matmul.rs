//! Matrix products that round the same on every CPU.
//!
//! candle's CPU matmul (the `gemm` crate) sums the shared dimension in blocks whose size it
//! derives from the L1 data cache it detects: 512 on a CPU with an 8-way 32 KiB L1, 1,024 on one
//! with a 12-way 48 KiB L1. Float addition is not associative, so the same product rounds
//! differently on two machines, and training compounds that over hundreds of steps into another
//! model (a tiny organism's final loss moved from 0.770 to 0.749). Every product here sums a
//! shared dimension longer than [`BLOCK`] in equal chunks of at most [`BLOCK`], each one `gemm`
//! call that accumulates into the result, so that each is summed as one block on any machine:
//! the split `gemm` makes on an 8-way L1, made on every machine. `gemm`'s AVX-512 kernels run
//! only on products whose every output element they sum in order, as the AVX2 kernels do; the
//! products it would sum across SIMD lanes (one row or column, m·n ≤ 256) run its AVX2 kernels
//! on every x86 CPU ([`chunk_product`]). Other devices and dtypes get candle's plain product.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// The longest stretch of the shared dimension summed in one `gemm` call: `gemm` never splits
/// a shared dimension of this length or less, whatever cache it detects.
pub const BLOCK: usize = 512;

/// The `(start, len)` chunks a shared dimension of `k` is summed in: as few as fit in
/// [`BLOCK`], of equal length but the last.
pub fn chunks(k: usize) -> Vec<(usize, usize)> {
    let n = k.div_ceil(BLOCK).max(1);
    let size = k.div_ceil(n).max(1);
    (0..k).step_by(size).map(|start| (start, size.min(k - start))).collect()
}

/// `a · b` over the last two dimensions (batch dimensions equal, as [`Tensor::matmul`]), with
/// the same rounding on every CPU. No gradient.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !exact(a, b) {
        return a.matmul(b);
    }
    a.apply_op2_no_bwd(b, &Product { grad_b: false })
}

/// `x · Wᵀ` for `x` of any rank `[…, in]` and `W` `[out, in]`, with the same rounding on every
/// CPU. No gradient.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    rows_apply(x, w, matmul)
}

/// `a · b` with gradients to `a`, and to `b` when `grad_b` (a frozen `b` spares backward that
/// product), both also rounded the same on every CPU.
pub(crate) fn product(a: &Tensor, b: &Tensor, grad_b: bool) -> Result<Tensor> {
    if !exact(a, b) {
        return if grad_b { a.matmul(b) } else { a.matmul(&b.detach()) };
    }
    a.apply_op2(b, Product { grad_b })
}

/// `x · Wᵀ` as [`linear`], with gradients as [`product`].
pub(crate) fn linear_grad(x: &Tensor, w: &Tensor, grad_w: bool) -> Result<Tensor> {
    rows_apply(x, w, |x2, wt| product(x2, wt, grad_w))
}

/// Whether the product of `a` and `b` runs here (f32 on the CPU) rather than in candle.
fn exact(a: &Tensor, b: &Tensor) -> bool {
    a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32
}

/// `f(x as [rows, in], Wᵀ)` reshaped back to `[…, out]`.
fn rows_apply(x: &Tensor, w: &Tensor, f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&last, lead)) = dims.split_last() else {
        candle_core::bail!("scalar input to a linear layer")
    };
    let rows: usize = lead.iter().product();
    let y = f(&x.reshape((rows, last))?, &w.t()?)?;
    let mut out = lead.to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}

/// The product as a candle op: forward on strided CPU storage, backward by the same products.
struct Product {
    grad_b: bool,
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "exact-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (da, db) = (l1.dims(), l2.dims());
        let rank = da.len();
        if rank < 2 || db.len() != rank || da[..rank - 2] != db[..rank - 2] || da[rank - 1] != db[rank - 2] {
            candle_core::bail!("matmul of {da:?} and {db:?}: the shapes do not chain")
        }
        let (m, k, n) = (da[rank - 2], da[rank - 1], db[rank - 1]);
        let batch = &da[..rank - 2];
        let (a, b) = (s1.as_slice::<f32>()?, s2.as_slice::<f32>()?);
        let (sa, sb) = (l1.stride(), l2.stride());
        let count: usize = batch.iter().product();
        let mut dst = vec![0f32; count * m * n];
        for (i, out) in dst.chunks_exact_mut((m * n).max(1)).enumerate().take(count) {
            let (mut oa, mut ob, mut rest) = (l1.start_offset(), l2.start_offset(), i);
            for d in (0..batch.len()).rev() {
                let j = rest % batch[d];
                rest /= batch[d];
                oa += j * sa[d];
                ob += j * sb[d];
            }
            let lhs = Strided::new(a, oa, sa[rank - 2], sa[rank - 1], m, k)?;
            let rhs = Strided::new(b, ob, sb[rank - 2], sb[rank - 1], k, n)?;
            gemm_into(out, &lhs, &rhs, m, k, n);
        }
        let mut shape = da.to_vec();
        shape[rank - 1] = n;
        Ok((CpuStorage::F32(dst), Shape::from(shape)))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_a = matmul(grad, &b.detach().t()?)?;
        let grad_b = if self.grad_b {
            Some(matmul(&a.detach().t()?, grad)?)
        } else {
            None
        };
        Ok((Some(grad_a), grad_b))
    }
}

/// A matrix inside a slice: `rows × cols` from `offset` with the given strides, every element
/// checked to lie inside the slice.
struct Strided<'a> {
    data: &'a [f32],
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Strided<'a> {
    fn new(
        data: &'a [f32],
        offset: usize,
        row_stride: usize,
        col_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        if rows > 0 && cols > 0 {
            let last = (rows - 1)
                .checked_mul(row_stride)
                .zip((cols - 1).checked_mul(col_stride))
                .and_then(|(r, c)| r.checked_add(c)?.checked_add(offset));
            if last.is_none_or(|l| l >= data.len()) {
                candle_core::bail!("matmul operand of {rows}x{cols} lies outside its storage")
            }
        }
        Ok(Self {
            data,
            offset,
            row_stride,
            col_stride,
        })
    }
}

/// `dst = lhs · rhs` (`m × k` by `k × n`, `dst` row-major `m × n`), summed chunk by chunk
/// ([`chunks`]), each chunk accumulated into `dst` in order.
fn gemm_into(dst: &mut [f32], lhs: &Strided, rhs: &Strided, m: usize, k: usize, n: usize) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for (i, (start, len)) in chunks(k).into_iter().enumerate() {
        // SAFETY: `dst` holds m·n elements written row-major (row stride n, column stride 1);
        // `Strided::new` checked that every element of both operands lies in its slice, and the
        // chunk only narrows the shared dimension (start + len <= k).
        unsafe {
            chunk_product(
                Chunk {
                    m,
                    n,
                    k: len,
                    dst: dst.as_mut_ptr(),
                    dst_cs: 1,
                    dst_rs: n as isize,
                    read_dst: i > 0,
                    lhs: lhs.data.as_ptr().add(lhs.offset + start * lhs.col_stride),
                    lhs_cs: lhs.col_stride as isize,
                    lhs_rs: lhs.row_stride as isize,
                    rhs: rhs.data.as_ptr().add(rhs.offset + start * rhs.row_stride),
                    rhs_cs: rhs.col_stride as isize,
                    rhs_rs: rhs.row_stride as isize,
                },
                parallelism,
            );
        }
    }
}

/// One `gemm` call's operands: `dst (+)= lhs · rhs`, `m × k` by `k × n`, with element strides
/// along columns (`_cs`) and rows (`_rs`), none negative; `read_dst` adds to what `dst` holds.
#[derive(Clone, Copy)]
struct Chunk {
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
}

/// Whether `gemm` may sum this product's shared dimension across SIMD lanes and add the lanes
/// at the end, so that its rounding depends on the vector width: its horizontal kernel (m·n ≤
/// 256), its matrix-vector kernels (a single row or column) and its k ≤ 2 kernel. Every other
/// product goes through its register-tiled kernel, which sums each output element in order
/// whatever the width. The test is symmetric in m and n, as `gemm`'s own transposition is.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn lane_summed(m: usize, n: usize, k: usize) -> bool {
    k <= 2 || m <= 1 || n <= 1 || m * n <= 16 * 16
}

/// Whether a product is wide enough for `gemm`'s AVX-512 tiles to pay: more than 64 rows and
/// columns. Below that they ran slower than the AVX2 ones (SmolLM2 decoding at batch 16: 105
/// against 133 tokens/s; BENCHMARKS.md), and both round the same, so this is speed only.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn wide(m: usize, n: usize) -> bool {
    m.min(n) > 64
}

/// `gemm`'s product for one chunk, rounded as on an AVX2 machine: products whose rounding
/// depends on the vector width ([`lane_summed`]) run `gemm`'s AVX2 (FMA) kernels even where
/// AVX-512 ones exist, and so do products too narrow for those to pay ([`wide`]); the rest
/// take the widest kernels the CPU has, which round the same.
///
/// # Safety
/// As [`gemm::gemm`]: every element the strides reach lies in its allocation, and `dst` is
/// not aliased by `lhs` or `rhs`.
unsafe fn chunk_product(c: Chunk, parallelism: gemm::Parallelism) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if lane_summed(c.m, c.n, c.k) || !wide(c.m, c.n) {
        // SAFETY: as this function's contract.
        if unsafe { avx2::product(c, parallelism) } {
            return;
        }
    }
    // SAFETY: as this function's contract.
    unsafe {
        gemm::gemm(
            c.m,
            c.n,
            c.k,
            c.dst,
            c.dst_cs,
            c.dst_rs,
            c.read_dst,
            c.lhs,
            c.lhs_cs,
            c.lhs_rs,
            c.rhs,
            c.rhs_cs,
            c.rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `gemm`'s f32 product with its AVX2 (FMA) kernels chosen explicitly: the dispatch `gemm::gemm`
/// makes on a CPU without AVX-512, made on every x86 CPU that has AVX2 and FMA.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod avx2 {
    use gemm_common::simd::{MixedSimd, V3};
    use gemm_f32::microkernel::fma::f32 as fma;

    use super::Chunk;

    /// f32 lanes in an AVX2 register.
    const LANES: usize = 8;

    /// Runs `c` with the AVX2 kernels as `gemm::gemm` would (its transposition of a row-major
    /// destination included); false, with nothing written, when the CPU lacks AVX2 or FMA.
    ///
    /// # Safety
    /// As [`super::chunk_product`].
    pub(super) unsafe fn product(c: Chunk, parallelism: gemm::Parallelism) -> bool {
        let Some(simd) = <V3 as MixedSimd<f32, f32, f32, f32>>::try_new() else {
            return false;
        };
        // `gemm::gemm` transposes a product whose destination is closer to column-major.
        let c = if c.dst_cs.abs() < c.dst_rs.abs() {
            Chunk {
                m: c.n,
                n: c.m,
                dst_cs: c.dst_rs,
                dst_rs: c.dst_cs,
                lhs: c.rhs,
                lhs_cs: c.rhs_rs,
                lhs_rs: c.rhs_cs,
                rhs: c.lhs,
                rhs_cs: c.lhs_rs,
                rhs_rs: c.lhs_cs,
                ..c
            }
        } else {
            c
        };
        // SAFETY: as this function's contract; the kernels are those `gemm::gemm` runs on this
        // CPU kind, with the constants they were built for.
        unsafe {
            gemm_common::gemm::gemm_basic_generic::<
                V3,
                f32,
                LANES,
                { fma::MR_DIV_N * LANES },
                { fma::NR },
                { fma::MR_DIV_N },
                { fma::H_M },
                { fma::H_N },
            >(
                simd,
                c.m,
                c.n,
                c.k,
                c.dst,
                c.dst_cs,
                c.dst_rs,
                c.read_dst,
                c.lhs,
                c.lhs_cs,
                c.lhs_rs,
                c.rhs,
                c.rhs_cs,
                c.rhs_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                |a, b, c| a * b + c,
                &fma::UKR,
                &fma::H_UKR,
                false,
                parallelism,
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
        v.into_iter().map(f32::to_bits).collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).and_then(|d| d.abs()?.max_all()?.to_scalar()).expect("diff")
    }

    #[test]
    fn chunks_cover_the_dimension_in_equal_blocks_of_at_most_512() {
        assert_eq!(chunks(0), vec![]);
        assert_eq!(chunks(1), vec![(0, 1)]);
        assert_eq!(chunks(512), vec![(0, 512)]);
        assert_eq!(chunks(576), vec![(0, 288), (288, 288)]);
        assert_eq!(chunks(1536), vec![(0, 512), (512, 512), (1024, 512)]);
        assert_eq!(chunks(1025), vec![(0, 342), (342, 342), (684, 341)]);
        for k in [1, 7, 511, 513, 1000, 2049, 49152] {
            let c = chunks(k);
            assert_eq!(c.iter().map(|&(_, l)| l).sum::<usize>(), k);
            assert!(c.iter().all(|&(_, l)| (1..=BLOCK).contains(&l)));
            assert!(c.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        }
    }

    /// Past [`BLOCK`], the product is exactly the in-order sum of the chunks' products (what
    /// makes it machine-independent) and agrees with the plain product to rounding; at or below
    /// it, it is candle's product bit for bit.
    #[test]
    fn a_long_shared_dimension_is_summed_chunk_by_chunk() {
        let a = random(&[2, 70, 1100], 1);
        let b = random(&[2, 1100, 90], 2);
        let got = matmul(&a, &b).expect("matmul");
        let mut want: Option<Tensor> = None;
        for (s, l) in chunks(1100) {
            let p = a
                .narrow(2, s, l)
                .and_then(|x| x.matmul(&b.narrow(1, s, l)?))
                .expect("part");
            want = Some(match want {
                Some(w) => (w + p).expect("add"),
                None => p,
            });
        }
        assert_eq!(bits(&got), bits(&want.expect("chunks")));
        assert!(max_diff(&got, &a.matmul(&b).expect("plain")) < 1e-3);

        let short = random(&[2, 90, 512], 3);
        let b = random(&[2, 512, 70], 4);
        let plain = short.matmul(&b).expect("plain");
        assert_eq!(bits(&matmul(&short, &b).expect("matmul")), bits(&plain));
    }

    #[test]
    fn strided_operands_and_linear_layers() {
        let x = random(&[3, 5, 700], 5);
        let w = random(&[40, 700], 6);
        let got = linear(&x, &w).expect("linear");
        assert_eq!(got.dims(), &[3, 5, 40]);
        let plain = x.broadcast_matmul(&w.t().expect("t")).expect("plain");
        assert!(max_diff(&got, &plain) < 1e-3);
        // A transposed left operand (column-major) and a narrowed one give the same numbers as
        // their contiguous copies.
        let at = random(&[700, 30], 7).t().expect("t");
        let b = random(&[700, 20], 8);
        let want = matmul(&at.contiguous().expect("copy"), &b).expect("matmul");
        assert_eq!(bits(&matmul(&at, &b).expect("matmul")), bits(&want));
        let wide = random(&[6, 900], 9);
        let part = wide.narrow(1, 100, 600).expect("narrow");
        let b = random(&[600, 10], 10);
        let want = matmul(&part.contiguous().expect("copy"), &b).expect("matmul");
        assert_eq!(bits(&matmul(&part, &b).expect("matmul")), bits(&want));
        assert!(matmul(&random(&[2, 3], 11), &random(&[4, 5], 12)).is_err());
    }

    /// Every product rounds as `gemm`'s AVX2 kernels round it, on any x86 CPU: on one with
    /// AVX-512 the wider kernels run only where they agree with those bit for bit. Shapes cover
    /// each of `gemm`'s paths (one row, one column, m·n ≤ 256, k ≤ 2, the tiled kernel with edge
    /// tiles, narrow and [`wide`]), contiguous and transposed right operands (a linear layer's
    /// `Wᵀ`), one chunk and several.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[test]
    fn products_round_as_the_avx2_kernels_do() {
        let shapes = [
            (1, 576, 576),
            (1, 64, 192),
            (300, 40, 1),
            (7, 2, 9),
            (16, 576, 16),
            (3, 100, 90),
            (17, 512, 129),
            (64, 576, 192),
            (128, 1536, 576),
            (100, 513, 49),
            (250, 64, 300),
            (65, 300, 70),
            (200, 576, 1536),
        ];
        for (i, &(m, k, n)) in shapes.iter().enumerate() {
            let seed = 100 + 4 * i as u64;
            let a = random(&[m, k], seed);
            let w = random(&[n, k], seed + 1);
            let wv = w.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("w");
            let bt = w.t().and_then(|t| t.contiguous()).expect("copy");
            let btv = bt.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("wt");
            let av = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a");
            // `Wᵀ` as a view of `W` (k contiguous), then as a row-major copy (n contiguous).
            let layouts = [(w.t().expect("t"), &wv, 1, k as isize), (bt, &btv, n as isize, 1)];
            for (b, bv, rhs_rs, rhs_cs) in layouts {
                let got = matmul(&a, &b).expect("matmul");
                let mut want = vec![0f32; m * n];
                for (j, (start, len)) in chunks(k).into_iter().enumerate() {
                    // SAFETY: the strides describe `a` and `b` within their copies; the chunk
                    // lies inside the shared dimension.
                    let ran = unsafe {
                        avx2::product(
                            Chunk {
                                m,
                                n,
                                k: len,
                                dst: want.as_mut_ptr(),
                                dst_cs: 1,
                                dst_rs: n as isize,
                                read_dst: j > 0,
                                lhs: av.as_ptr().add(start),
                                lhs_cs: 1,
                                lhs_rs: k as isize,
                                rhs: bv.as_ptr().add(start * rhs_rs as usize),
                                rhs_cs,
                                rhs_rs,
                            },
                            gemm::Parallelism::None,
                        )
                    };
                    if !ran {
                        return;
                    }
                }
                let want: Vec<u32> = want.into_iter().map(f32::to_bits).collect();
                assert_eq!(bits(&got), want, "{m}x{k}x{n}");
            }
        }
    }

    /// Gradients through [`product`] match candle's own matmul backward.
    #[test]
    fn gradients_match_candles() {
        let a = Var::from_tensor(&random(&[2, 9, 600], 13)).expect("var");
        let b = Var::from_tensor(&random(&[2, 600, 11], 14)).expect("var");
        let weights = random(&[2, 9, 11], 15);
        let grads = |y: Tensor| {
            let g = (y * &weights).and_then(|l| l.sum_all()?.backward()).expect("backward");
            let ga = g.get(a.as_tensor()).expect("grad a").clone();
            (ga, g.get(b.as_tensor()).cloned())
        };
        let (ga, gb) = grads(product(a.as_tensor(), b.as_tensor(), true).expect("product"));
        let (pa, pb) = grads(a.as_tensor().matmul(b.as_tensor()).expect("plain"));
        assert!(max_diff(&ga, &pa) < 1e-3);
        assert!(max_diff(&gb.expect("grad b"), &pb.expect("plain grad b")) < 1e-3);
        let (fa, fb) = grads(product(a.as_tensor(), b.as_tensor(), false).expect("frozen"));
        assert_eq!(bits(&fa), bits(&ga));
        assert!(fb.is_none(), "a frozen operand gets no gradient");
    }
}
