//! The one S3 client builder: the sender reads the production bucket with it, the receiver's
//! restore writes to a bucket with it. Path-style addressing, so MinIO works as it is.

/// A client for `endpoint` in `region` with static credentials; `app` names the program
/// in the credentials' provider name (it shows in the SDK's logs).
pub fn client(
    endpoint: &str,
    region: &str,
    access: String,
    secret: String,
    app: &'static str,
) -> aws_sdk_s3::Client {
    let creds = aws_credential_types::Credentials::new(access, secret, None, None, app);
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_s3::config::Region::new(region.to_string()))
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// An SDK error as one line for a message: the error and each cause by its `Display`
/// (`dispatch failure: io error: … Connection refused`). The SDK's own
/// `DisplayErrorContext` appends a `Debug` dump (`DispatchFailure { … }`) that an
/// operator should never have to read.
pub fn error_text<E: std::error::Error + 'static>(e: &E) -> String {
    crate::error_chain(e)
}
