//! Quotes: miners × GPUs × hours × price per GPU-hour, the price of the dearest GPU model
//! the request allows where the pool prices models apart; settlements charge each
//! allocation at the price of the model it ran on.

use std::collections::BTreeMap;

use aic_schemas::{JobRequest, Quote};

use crate::scheduler::gpus::{GpuWants, model_matches};

/// The pool's price list. Amounts are in the token's smallest unit (AIC has 18 decimals).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pricing {
    /// The price of a GPU-hour of a model not priced in `gpu_prices` (of every model when
    /// there are none).
    pub price_per_gpu_hour: u128,
    /// Prices per GPU-hour by model (`AIC_GPU_PRICES`), each a model name matched as users'
    /// `--gpu-type` is (`A100` prices `NVIDIA A100-SXM4-80GB`; of several that match, the one
    /// of the most words).
    pub gpu_prices: BTreeMap<String, u128>,
    /// The ERC-20 contract payments are made in; `None` on a free pool.
    pub token: Option<String>,
}

/// The words of a model name, lower case (as `model_matches` reads them).
fn words(model: &str) -> Vec<String> {
    model.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_ascii_lowercase).collect()
}

/// What a GPU-hour costs, and of which of the pool's prices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    pub per_gpu_hour: u128,
    /// The priced model it is (a key of `gpu_prices`); `None`: the default price.
    pub model: Option<String>,
}

impl Pricing {
    pub fn free() -> Self {
        Pricing::default()
    }

    /// Each miner's price per GPU-hour, by its GPUs' model (none on a free pool).
    pub fn price_miners(&self, gateways: &mut [crate::scheduler::GatewayInfo]) {
        for m in gateways.iter_mut().flat_map(|g| g.miners.iter_mut()) {
            m.price_per_gpu_hour =
                (!self.is_free()).then(|| self.price_of(m.gpu_model.as_deref()).per_gpu_hour.to_string());
        }
    }

    /// Whether nothing costs anything here.
    pub fn is_free(&self) -> bool {
        self.price_per_gpu_hour == 0 && self.gpu_prices.values().all(|p| *p == 0)
    }

    /// The price of a GPU-hour on a GPU of `model` (unknown: the default).
    pub fn price_of(&self, model: Option<&str>) -> Price {
        // Of the most words; of those, the dearest.
        let priced = model.and_then(|m| {
            self.gpu_prices.iter().filter(|(p, _)| model_matches(p, m)).max_by_key(|(p, v)| (words(p).len(), **v))
        });
        match priced {
            Some((p, price)) => Price { per_gpu_hour: *price, model: Some(p.clone()) },
            None => Price { per_gpu_hour: self.price_per_gpu_hour, model: None },
        }
    }

    /// The dearest price a job asking `wants` is quoted at: of the priced models one of its
    /// models could be (the one names the other, `A100` and `A100 80GB`, or they share a
    /// word, `A100 80GB` and `A100 SXM4`), and the default unless a priced model covers all a
    /// model it asks could be; every price when it asks for any model. A run is never charged
    /// more than this per GPU-hour ([`Pricing::of_quote`] caps it), whatever a miner's model
    /// name has in common with the operator's price list.
    pub fn dearest(&self, wants: &GpuWants) -> Price {
        let default = Price { per_gpu_hour: self.price_per_gpu_hour, model: None };
        let mut candidates: Vec<Price> = vec![];
        if wants.models.is_empty() {
            candidates.push(default.clone());
            candidates.extend(self.gpu_prices.iter().map(|(p, v)| Price { per_gpu_hour: *v, model: Some(p.clone()) }));
        }
        for asked in &wants.models {
            let mut covered = false;
            for (p, v) in &self.gpu_prices {
                let (narrower, wider) = (model_matches(asked, p), model_matches(p, asked));
                let shared = words(p).iter().any(|w| words(asked).contains(w));
                covered |= wider;
                if narrower || wider || shared {
                    candidates.push(Price { per_gpu_hour: *v, model: Some(p.clone()) });
                }
            }
            if !covered {
                candidates.push(default.clone());
            }
        }
        candidates.into_iter().max_by_key(|c| (c.per_gpu_hour, c.model.is_none())).unwrap_or(default)
    }

    /// The quote for a request: at the dearest price its GPUs could cost. Hours are counted
    /// in thousandths, rounded up, so a quote never undercharges by rounding.
    pub fn quote(&self, req: &JobRequest) -> Quote {
        self.quote_asking(req.miners, req.gpus_per_miner, req.max_hours, &GpuWants::of(req))
    }

    /// The quote for `miners` × `gpus` GPUs of what `wants` allows, for `hours`.
    pub fn quote_asking(&self, miners: u32, gpus: u32, hours: f64, wants: &GpuWants) -> Quote {
        let price = self.dearest(wants);
        let mut q = Self::quote_at(price.per_gpu_hour, miners, gpus, hours, &self.token);
        if !self.gpu_prices.is_empty() {
            q.model = Some(price.model.unwrap_or_else(|| OTHER_MODELS.into()));
            q.gpu_prices = self.gpu_prices.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
            q.base_price_per_gpu_hour = Some(self.price_per_gpu_hour.to_string());
        }
        q
    }

    /// The quote for `miners` × `gpus` GPUs for `hours` at the default price.
    pub fn quote_for(&self, miners: u32, gpus: u32, hours: f64) -> Quote {
        Self::quote_at(self.price_per_gpu_hour, miners, gpus, hours, &self.token)
    }

    fn quote_at(price: u128, miners: u32, gpus: u32, hours: f64, token: &Option<String>) -> Quote {
        let milli_hours = (hours * 1000.0).ceil() as u128;
        let milli_gpu_hours = milli_hours * miners as u128 * gpus as u128;
        let total = (price * milli_gpu_hours).div_ceil(1000);
        Quote {
            price_per_gpu_hour: price.to_string(),
            gpu_hours: milli_gpu_hours as f64 / 1000.0,
            total: total.to_string(),
            token: token.clone(),
            ..Default::default()
        }
    }

    /// The prices a quote was made with, to charge a run by (a run is charged at the prices
    /// it was quoted, whatever the pool's are by the time it ends), none over the price the
    /// quote was made at: a user is never charged more per GPU-hour than quoted.
    pub fn of_quote(q: &Quote) -> Pricing {
        let parse = |s: &str| s.parse::<u128>().unwrap_or(0);
        let cap = parse(&q.price_per_gpu_hour);
        Pricing {
            price_per_gpu_hour: q
                .base_price_per_gpu_hour
                .as_deref()
                .map_or_else(|| parse(&q.price_per_gpu_hour), parse)
                .min(cap),
            gpu_prices: q.gpu_prices.iter().map(|(k, v)| (k.clone(), parse(v).min(cap))).collect(),
            token: q.token.clone(),
        }
    }
}

/// How a quote names the default price, when it is the dearest a request could be charged.
pub const OTHER_MODELS: &str = "other models";

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
        let p = Pricing { price_per_gpu_hour: 10u128.pow(18), ..Default::default() };
        let q = p.quote(&r);
        assert_eq!(q.gpu_hours, 9.0);
        assert_eq!(q.total, (9 * 10u128.pow(18)).to_string());
        r.max_hours = 0.0001; // rounds up to a thousandth of an hour
        assert_eq!(p.quote(&r).total, (6 * 10u128.pow(15)).to_string());
        assert_eq!(Pricing::free().quote(&r).total, "0");
        assert_eq!(p.quote(&r).model, None, "one price: no model named");
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

    #[test]
    fn a_quote_prices_the_dearest_model_a_request_allows_and_a_run_is_charged_by_the_one_it_ran_on() {
        let aic = 10u128.pow(18);
        let p = Pricing {
            price_per_gpu_hour: aic,
            gpu_prices: [("A100".to_string(), 3 * aic), ("A100 80GB".into(), 4 * aic), ("T4".into(), aic / 2)].into(),
            token: None,
        };
        let wants =
            |models: &[&str]| GpuWants { models: models.iter().map(|m| m.to_string()).collect(), ..Default::default() };
        let price = |m: &Price| (m.per_gpu_hour, m.model.clone());
        // Any model: the dearest of all.
        assert_eq!(price(&p.dearest(&wants(&[]))), (4 * aic, Some("A100 80GB".into())));
        // A100: an A100 80GB is one too.
        assert_eq!(price(&p.dearest(&wants(&["a100"]))), (4 * aic, Some("A100 80GB".into())));
        // T4: only the T4 price (every T4 is priced so).
        assert_eq!(price(&p.dearest(&wants(&["T4"]))), (aic / 2, Some("T4".into())));
        // A model with no price of its own: the default.
        assert_eq!(price(&p.dearest(&wants(&["T4", "L4"]))), (aic, None));
        // What a GPU costs: of the most words that match, else the default.
        assert_eq!(price(&p.price_of(Some("NVIDIA A100-SXM4-80GB"))), (4 * aic, Some("A100 80GB".into())));
        assert_eq!(price(&p.price_of(Some("NVIDIA A100-SXM4-40GB"))), (3 * aic, Some("A100".into())));
        assert_eq!(price(&p.price_of(Some("Tesla T4"))), (aic / 2, Some("T4".into())));
        assert_eq!(price(&p.price_of(None)), (aic, None));
        // The quote names what it priced and keeps the prices the run is charged by.
        let mut r: JobRequest = serde_json::from_value(serde_json::json!({
            "version": 1, "kind": "train", "owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            "job_id": "01jb0000000000000000000000", "entrypoint": "t.py", "miners": 1, "gpus_per_miner": 2,
            "max_hours": 1.0, "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z",
            "gpu_types": ["T4"]
        }))
        .unwrap();
        let q = p.quote(&r);
        assert_eq!((q.total.as_str(), q.model.as_deref()), ("1000000000000000000", Some("T4")));
        // Charged by the quote's prices, none over its own (0.5 AIC here).
        let charged = Pricing::of_quote(&q);
        assert_eq!(charged.price_of(Some("Tesla T4")).per_gpu_hour, aic / 2);
        assert_eq!(charged.price_of(Some("NVIDIA A100-SXM4-80GB")).per_gpu_hour, aic / 2, "capped at the quote");
        r.gpu_types = vec!["L4".into()];
        assert_eq!(p.quote(&r).model.as_deref(), Some(OTHER_MODELS));
        // A priced model sharing a word with the one asked counts: `A100 80GB` asked, and the
        // miner's `NVIDIA A100-SXM4-80GB` priced as `A100 SXM4`.
        let p2 = Pricing {
            price_per_gpu_hour: aic,
            gpu_prices: [("A100".to_string(), 3 * aic), ("A100 SXM4".into(), 5 * aic)].into(),
            token: None,
        };
        assert_eq!(p2.dearest(&wants(&["A100 80GB"])).per_gpu_hour, 5 * aic);
        assert_eq!(p2.price_of(Some("NVIDIA A100-SXM4-80GB")).per_gpu_hour, 5 * aic);
    }
}
