//! The standard normal density and distribution function, for the Parzen estimators and Expected Improvement.

const SQRT_2PI: f64 = 2.506_628_274_631_000_7;

pub(crate) fn pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / SQRT_2PI
}

pub(crate) fn cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The complementary error function, by the Chebyshev fit of Numerical Recipes (`erfcc`): relative error below
/// 1.2e-7 everywhere, plenty for ranking candidates.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        assert!((super::cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((super::cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((super::cdf(-1.0) - 0.158_655_25).abs() < 1e-6);
        assert!((super::pdf(0.0) - 0.398_942_28).abs() < 1e-8);
    }
}
