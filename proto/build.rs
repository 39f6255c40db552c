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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
