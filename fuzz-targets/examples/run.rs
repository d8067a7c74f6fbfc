//! Runs one input through a target on stable: `FERRY_FUZZ_TRACE=1 cargo run -p ferry-fuzz-targets --example run -- <target> <file>`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[2]).expect("input file reads");
    let run = ferry_fuzz_targets::TARGETS.iter().find(|(name, _)| *name == args[1]).expect("no such target").1;
    run(&data);
    println!("{}: no finding", args[2]);
}
