//! Prints how a target reads an input file: `cargo run -p ferry-fuzz-targets --example show -- <target> <file>`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (target, path) = (&args[1], &args[2]);
    let data = std::fs::read(path).expect("input file reads");
    let text = match target.as_str() {
        "segments" => ferry_fuzz_targets::segments::describe(&data),
        "harness" => ferry_fuzz_targets::harness::describe(&data),
        "frame" => ferry_fuzz_targets::frame::describe(&data),
        other => panic!("no target {other}"),
    };
    println!("{text}");
}
