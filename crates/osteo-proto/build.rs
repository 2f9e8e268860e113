//! Compiles proto/osteo/v1/osteo.proto and proto/inference/grpc_service.proto (the Open Inference
//! Protocol) with protox (pure Rust, no system protoc) and writes the file descriptor set next to
//! the generated code for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        proto_root.join("osteo/v1/osteo.proto"),
        proto_root.join("inference/grpc_service.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("osteo_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::ValidatingCodec")
        .compile_fds(fds)?;
    Ok(())
}
