//! AWS Lambda: the gateway API behind a function URL (see `infra/aws/template.yaml`;
//! configuration as for `aic-functions`, with `AIC_GATEWAY_SECRET`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).without_time().init();
    aic_functions::lambda::run_gateway().await
}
