//! Compiles `proto/backup.proto` with protox, a pure-Rust protobuf compiler, so the build
//! needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = proto_dir.join("backup.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Chunk payloads are shared between retries without copying.
        .bytes(".familienarchiv.backup.v1.ChunkUpload.data")
        .compile_fds(fds)?;
    Ok(())
}
