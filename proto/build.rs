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
    // The gRPC stubs only with the `admin` feature: without it the crate
    // is messages and framing alone (what a WebAssembly build needs).
    let admin = std::env::var_os("CARGO_FEATURE_ADMIN").is_some();
    tonic_prost_build::configure()
        .build_server(admin)
        .build_client(admin)
        .compile_fds(fds)?;
    Ok(())
}
