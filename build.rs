//! Generates the Protobuf types and the gRPC service from `proto/` without a
//! system `protoc`: protox parses the `.proto` files in Rust, and
//! tonic-prost-build turns the descriptors into messages (prost), a server
//! trait and a client (tonic).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/cdrvault/v1/cdr.proto", "proto/cdrvault/v1/lawful_access.proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
