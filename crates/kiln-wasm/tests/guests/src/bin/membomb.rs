//! Allocates and touches 16 MiB at a time until something stops it.
fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        println!("holding {} MiB", hoard.len() * 16);
    }
}
