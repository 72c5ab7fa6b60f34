//! `POST /v1/draft`: what a job request costs and what the wallet is asked to do, for a
//! client that builds the request itself (the web app). The body is the unsigned request
//! the caller is about to pay for and sign; the answer is its quote, the calls that pay it
//! (an allowance and a deposit into the escrow for run 0, or a transfer), and the EIP-712
//! typed data `eth_signTypedData_v4` takes — the same the CLI signs, built in one place
//! (`aic_chain::request`). Nothing is written; validate checks everything again.
//!
//! A request the pool could never place, or that names a dataset the caller does not have,
//! is refused here, before anything is paid.

use super::*;
use aic_schemas::JobRequest;

impl Gateway {
    pub(super) async fn draft(&self, who: &Address, body: &[u8]) -> Reply {
        let mut req: JobRequest =
            serde_json::from_slice(body).map_err(|e| bad(format!("the body must be a job request: {e}")))?;
        if req.owner != *who {
            return Err(err(StatusCode::FORBIDDEN, format!("the request's owner is {}, not you ({who})", req.owner)));
        }
        req.signature = None;
        req.validate(Some(Utc::now())).map_err(|e| bad(e.to_string()))?;
        if let Some(data) = &req.data {
            let prefix = format!("{}/", aic_core::layout::data_key(who, data).trim_end_matches('/'));
            let os = self.ctx.store.object_store();
            let first = os.list(Some(&prefix_path(&prefix).map_err(|e| bad(e.to_string()))?)).try_next().await;
            if first.map_err(store_err)?.is_none() {
                return Err(bad(format!("no dataset {data}: upload it first (Datasets); nothing was paid")));
            }
        }
        let gws = self.ctx.scheduler.pool().await.map_err(store_err)?;
        aic_core::scheduler::can_fit(
            &gws,
            req.miners,
            req.gpus_per_miner,
            &aic_core::scheduler::gpus::GpuWants::of(&req),
        )
        .map_err(|e| bad(format!("this job cannot run here: it {e} (see Pool); nothing was paid")))?;
        let chain: Option<aic_chain::ChainConfig> = serde_json::from_value(self.cfg.chain_info.clone()).ok();
        let (quote, payment) = match &chain {
            Some(c) if !c.is_free() => {
                let quote = c.pricing().quote(&req);
                let total: u128 = quote.total.parse().unwrap_or(0);
                let payment = (total > 0 && req.payment.is_none()).then(|| {
                    aic_chain::escrow::Payment::of(
                        c,
                        total,
                        aic_chain::to_alloy(&req.owner),
                        req.job_id.as_str(),
                        0,
                        req.max_hours,
                    )
                    .to_json()
                });
                (
                    json!({"total": quote.total, "gpu_hours": quote.gpu_hours, "display": aic_core::pricing::format_aic(total),
                        "price": aic_core::pricing::format_aic(quote.price_per_gpu_hour.parse().unwrap_or(0)),
                        "model": quote.model}),
                    payment,
                )
            }
            _ => (json!({"total": "0", "gpu_hours": req.total_gpus() as f64 * req.max_hours, "display": "free"}), None),
        };
        let typed = aic_chain::request::typed_data_json(&req, self.cfg.chain_id).map_err(|e| bad(e.to_string()))?;
        Ok(json!({ "quote": quote, "payment": payment, "typed_data": typed }))
    }
}
