//! The phantom is calibrated near the paper's difficulty: on held-out synthetic patients the
//! Bayes oracle (the ceiling of any model) reaches macro AUC about 0.95 and accuracy about 0.82,
//! and the information ordering of the paper holds: record + image > image > record.

use osteo_core::Grade;
use osteo_phantom::{Anatomy, ImageEvidence, Oracle, PhantomSpec, TScoreModel};
use osteo_train::evaluate;

#[test]
fn oracle_lands_near_the_papers_difficulty() {
    let model = TScoreModel::default();
    let oracle = Oracle::default();
    let spec = PhantomSpec::default();
    let patients = osteo_phantom::cohort(&model, 2024, 3012);
    let truth: Vec<Grade> = patients.iter().map(|p| p.grade).collect();
    let evidence: Vec<ImageEvidence> = patients
        .iter()
        .map(|p| ImageEvidence::of(&Anatomy::draw(p, &spec)))
        .collect();
    let fused: Vec<[f64; 3]> = patients
        .iter()
        .zip(&evidence)
        .map(|(p, e)| oracle.fused(p, e))
        .collect();
    let image: Vec<[f64; 3]> = evidence.iter().map(|e| oracle.image(e)).collect();
    let tabular: Vec<[f64; 3]> = patients.iter().map(|p| oracle.tabular(p)).collect();
    let (f, i, t) = (
        evaluate(&fused, &truth),
        evaluate(&image, &truth),
        evaluate(&tabular, &truth),
    );
    eprintln!(
        "oracle on 3012 patients: fused AUC {:.3} acc {:.3}; image AUC {:.3} acc {:.3}; tabular AUC {:.3} acc {:.3}",
        f.auc_macro, f.accuracy, i.auc_macro, i.accuracy, t.auc_macro, t.accuracy
    );
    assert!(
        (0.93..=0.97).contains(&f.auc_macro),
        "fused oracle macro AUC {:.3}",
        f.auc_macro
    );
    assert!(
        (0.78..=0.86).contains(&f.accuracy),
        "fused oracle accuracy {:.3}",
        f.accuracy
    );
    assert!(
        f.auc_macro > i.auc_macro && i.auc_macro > t.auc_macro,
        "ordering fused > image > tabular"
    );
}
