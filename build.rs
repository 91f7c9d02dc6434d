//! Compiles the control channel's protocols (proto/: the policy stream and the workload CA) with
//! protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors =
        protox::compile(["palisade/control/v1/policy.proto", "palisade/identity/v1/ca.proto"], ["proto"])?;
    // Small initial buffers per stream: a control plane holds thousands of idle streams.
    tonic_prost_build::configure()
        .codec_path("crate::proto::SmallBufferCodec")
        .bytes(".palisade.control.v1.Policy.document")
        .compile_fds(descriptors)?;
    Ok(())
}
