//! The CSR kernel against its plain reference on every path this CPU has, and the CSR
//! view's structural check.

use super::common::uniform;

/// Max abs difference between the CSR kernel paths and the plain reference.
const SPARSE_TOL: f32 = 1e-5;

#[test]
fn the_sparse_kernel_matches_its_reference_on_every_supported_path() {
    use squeeze::ops::sparse::{reference, spmm_with, Csr, CsrOwned};
    let (rows, cols) = (37, 91);
    let dense: Vec<f32> = uniform(rows * cols, 4)
        .into_iter()
        .map(|v| if v.abs() < 0.7 { 0.0 } else { v })
        .collect();
    let owned = CsrOwned::from_dense(&dense, rows, cols);
    let a = owned.view();
    a.check().unwrap();
    assert_eq!(a.to_dense(), dense);
    for m in [1, 3, 64] {
        let x: Vec<f32> = uniform(m * cols, 6).into_iter().collect();
        let want = reference(&a, &x, m);
        for isa in super::common::isa_paths(module_path!()) {
            let got = spmm_with(isa, &a, &x, m).unwrap();
            let d = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |acc, (g, w)| acc.max((g - w).abs()));
            assert!(d < SPARSE_TOL, "{isa:?}, batch {m}: {d}");
        }
    }
    let bad_ptr = [0u32, 5, 3];
    let bad = Csr {
        rows: 2,
        cols,
        indptr: &bad_ptr,
        indices: &owned.indices[..3],
        values: &owned.values[..3],
    };
    assert!(bad.check().is_err());
}
