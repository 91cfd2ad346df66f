//! Exact tails of the hypergeometric and binomial distributions, from a table of log-factorials:
//! the significance tests of the prompts stage and of `needle audit`.

/// `ln k!` for k up to a bound, for exact hypergeometric tails of large data sets.
pub(crate) struct LnFactorial(Vec<f64>);

impl LnFactorial {
    /// The table up to `n!`.
    pub(crate) fn new(n: usize) -> Self {
        let mut t = Vec::with_capacity(n + 1);
        t.push(0.0);
        for k in 1..=n {
            t.push(t[k - 1] + (k as f64).ln());
        }
        Self(t)
    }

    /// `ln C(n, k)`.
    pub(crate) fn choose(&self, n: usize, k: usize) -> f64 {
        self.0[n] - self.0[k] - self.0[n - k]
    }

    /// P(X ≥ `k`) for X hypergeometric: `draws` of `total` items of which `marked` are marked.
    pub(crate) fn tail(&self, k: usize, draws: usize, marked: usize, total: usize) -> f64 {
        let denominator = self.choose(total, draws);
        (k..=draws.min(marked))
            .filter(|&x| draws - x <= total - marked)
            .map(|x| (self.choose(marked, x) + self.choose(total - marked, draws - x) - denominator).exp())
            .sum::<f64>()
            .min(1.0)
    }

    /// P(X ≥ `k`) for X binomial(`n`, `p`), 0 < `p` < 1.
    pub(crate) fn binomial_tail(&self, k: usize, n: usize, p: f64) -> f64 {
        (k..=n)
            .map(|x| (self.choose(n, x) + x as f64 * p.ln() + (n - x) as f64 * (1.0 - p).ln()).exp())
            .sum::<f64>()
            .min(1.0)
    }
}
