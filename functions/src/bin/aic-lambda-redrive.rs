//! AWS Lambda: the re-driver, run every minute by an EventBridge schedule: deferred work
//! (a payment awaiting confirmations, a cancel the scheduler missed, an outage) is handled
//! again when due (see `aic_functions::redrive` and `infra/aws/template.yaml`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).without_time().init();
    aic_functions::lambda::run_redrive().await
}
