//! Runs inputs through a target on stable: `FERRY_FUZZ_TRACE=1 cargo run -p ferry-fuzz-targets --example run -- <target> <file>...`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let run = ferry_fuzz_targets::TARGETS.iter().find(|(name, _)| *name == args[1]).expect("no such target").1;
    for path in &args[2..] {
        let data = std::fs::read(path).expect("input file reads");
        run(&data);
        println!("{path}: no finding");
    }
}
