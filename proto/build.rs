//! Compiles the .proto files with the pure-Rust `protox` compiler (no system
//! `protoc`) and generates prost messages plus tonic stubs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/herold/v1/client.proto",
        "proto/herold/v1/admin.proto",
        "proto/herold/v1/cluster.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // The descriptor set, for gRPC reflection (grpcurl needs no .proto files).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("herold_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
