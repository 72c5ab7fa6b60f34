//! Quotes: miners × GPUs × hours × price per GPU-hour.

use aic_schemas::{JobRequest, Quote};

/// The pool's price list. Amounts are in the token's smallest unit (AIC has 18 decimals).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pricing {
    pub price_per_gpu_hour: u128,
    /// The ERC-20 contract payments are made in; `None` on a free pool.
    pub token: Option<String>,
}

impl Pricing {
    pub fn free() -> Self {
        Pricing::default()
    }

    /// The quote for a request. Hours are counted in thousandths, rounded up, so a quote
    /// never undercharges by rounding.
    pub fn quote(&self, req: &JobRequest) -> Quote {
        self.quote_for(req.miners, req.gpus_per_miner, req.max_hours)
    }

    /// The quote for `miners` × `gpus` GPUs for `hours`.
    pub fn quote_for(&self, miners: u32, gpus: u32, hours: f64) -> Quote {
        let milli_hours = (hours * 1000.0).ceil() as u128;
        let milli_gpu_hours = milli_hours * miners as u128 * gpus as u128;
        let total = (self.price_per_gpu_hour * milli_gpu_hours).div_ceil(1000);
        Quote {
            price_per_gpu_hour: self.price_per_gpu_hour.to_string(),
            gpu_hours: milli_gpu_hours as f64 / 1000.0,
            total: total.to_string(),
            token: self.token.clone(),
        }
    }
}

/// The hours a request pays for: its hours rounded up to a thousandth, as quoted.
pub fn paid_hours(hours: f64) -> f64 {
    (hours * 1000.0).ceil() / 1000.0
}

/// Hours as people write them: `0.002`, `1.5`, `2`.
pub fn format_hours(hours: f64) -> String {
    let s = format!("{:.3}", paid_hours(hours));
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Formats an amount with 18 decimals as a human number: `1.5 AIC`.
pub fn format_aic(amount: u128) -> String {
    let whole = amount / 10u128.pow(18);
    let frac = amount % 10u128.pow(18);
    if frac == 0 {
        return format!("{whole} AIC");
    }
    let frac = format!("{frac:018}");
    format!("{whole}.{} AIC", frac.trim_end_matches('0'))
}

/// An amount as people read it in a sentence: at most 6 decimals, rounded (`0.001944 AIC`);
/// records keep the exact amount.
pub fn format_aic_short(amount: u128) -> String {
    let unit = 10u128.pow(12); // 1e-6 AIC
    let rounded = amount.div_ceil(unit / 2) / 2 * unit;
    let s = format_aic(rounded);
    if rounded != amount && amount > 0 && rounded == 0 { "less than 0.000001 AIC".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_is_miners_gpus_hours_price() {
        let mut r: JobRequest = serde_json::from_value(serde_json::json!({
            "version": 1, "kind": "train", "owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            "job_id": "01jb0000000000000000000000", "entrypoint": "t.py", "miners": 2, "gpus_per_miner": 3,
            "max_hours": 1.5, "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z"
        }))
        .unwrap();
        let p = Pricing { price_per_gpu_hour: 10u128.pow(18), token: None };
        let q = p.quote(&r);
        assert_eq!(q.gpu_hours, 9.0);
        assert_eq!(q.total, (9 * 10u128.pow(18)).to_string());
        r.max_hours = 0.0001; // rounds up to a thousandth of an hour
        assert_eq!(p.quote(&r).total, (6 * 10u128.pow(15)).to_string());
        assert_eq!(Pricing::free().quote(&r).total, "0");
        assert_eq!(format_aic(15 * 10u128.pow(17)), "1.5 AIC");
        assert_eq!(format_aic_short(833_333_333_333_334), "0.000833 AIC");
        assert_eq!(format_aic_short(499_166_666_666_666_666), "0.499167 AIC");
        assert_eq!(format_aic_short(2 * 10u128.pow(18)), "2 AIC");
        assert_eq!(format_aic_short(1), "less than 0.000001 AIC");
        assert_eq!(
            (format_hours(0.002), format_hours(1.5), format_hours(2.0), format_hours(0.0001)),
            ("0.002".into(), "1.5".into(), "2".into(), "0.001".into())
        );
    }
}
