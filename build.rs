//! Generates the Protobuf types from `proto/` without a system `protoc`:
//! protox parses the `.proto` files in Rust and prost-build turns the
//! descriptors into code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/cdrvault/v1/cdr.proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
