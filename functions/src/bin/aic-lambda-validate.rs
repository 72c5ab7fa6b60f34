//! AWS Lambda: the validate function, invoked by the bucket's S3 notifications
//! (see `infra/aws/template.yaml`; configuration as for `aic-functions`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).without_time().init();
    aic_functions::lambda::run_s3(aic_functions::lambda::Function::Validate).await
}
