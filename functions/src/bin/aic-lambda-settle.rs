//! AWS Lambda: the settle function, invoked when a job's `status.json` is written (see
//! `infra/aws/template.yaml`; configuration as for `aic-functions`, with the escrow's
//! `AIC_SETTLER_KEY`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).without_time().init();
    aic_functions::lambda::run_s3(aic_functions::lambda::Function::Settle).await
}
