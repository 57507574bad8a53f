//! Compiles `api/proto/fulfil/v1/fulfil.proto` with protox (no system
//! `protoc`) and writes the descriptor set that server reflection serves:
//! `compile_fds` ignores `file_descriptor_set_path`, so it is written here.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../api/proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(["fulfil/v1/fulfil.proto"])?;
    std::fs::write(
        out.join("fulfil_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
