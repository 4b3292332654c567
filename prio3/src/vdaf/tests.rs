use super::*;

const CTX: &[u8] = b"quietwire test";
const KEY: [u8; VERIFY_KEY_SIZE] = [7; VERIFY_KEY_SIZE];

fn nonce(i: u8) -> [u8; NONCE_SIZE] {
    [i; NONCE_SIZE]
}

/// Both aggregators' verification of one report: (leader output share, helper output share).
fn verify(
    vdaf: &Prio3Vdaf,
    n: &[u8],
    report: &(Vec<u8>, Vec<u8>, Vec<u8>),
) -> Result<(Vec<u8>, Vec<u8>)> {
    let (public, leader_in, helper_in) = report;
    let (leader_state, leader_share) = vdaf.verify_init(&KEY, CTX, 0, n, public, leader_in)?;
    let (helper_state, helper_share) = vdaf.verify_init(&KEY, CTX, 1, n, public, helper_in)?;
    let message = vdaf.verifier_shares_to_message(CTX, &leader_share, &helper_share)?;
    Ok((
        vdaf.verify_next(CTX, 0, &leader_state, &message)?,
        vdaf.verify_next(CTX, 1, &helper_state, &message)?,
    ))
}

/// Shard, verify and aggregate `measurements`; returns both aggregate shares.
fn run(vdaf: &Prio3Vdaf, measurements: &[Vec<i128>]) -> (Vec<u8>, Vec<u8>) {
    let mut leader_out = Vec::new();
    let mut helper_out = Vec::new();
    for (i, m) in measurements.iter().enumerate() {
        let n = nonce(i as u8);
        let report = vdaf.shard(CTX, m, &n).unwrap();
        let (l, h) = verify(vdaf, &n, &report).unwrap();
        leader_out.push(l);
        helper_out.push(h);
    }
    (
        vdaf.aggregate(0, &leader_out).unwrap(),
        vdaf.aggregate(1, &helper_out).unwrap(),
    )
}

fn expected_sum(vdaf: &Prio3Vdaf, measurements: &[Vec<i128>]) -> Vec<i128> {
    let mut sum = vec![0i128; vdaf.output_length()];
    for m in measurements {
        if vdaf.kind() == Kind::Histogram {
            sum[m[0] as usize] += 1;
        } else {
            for (s, v) in sum.iter_mut().zip(m) {
                *s += v;
            }
        }
    }
    sum
}

fn round_trip(vdaf: &Prio3Vdaf, measurements: &[Vec<i128>]) {
    let (leader, helper) = run(vdaf, measurements);
    let n = measurements.len() as i64;
    let sum = expected_sum(vdaf, measurements);
    assert_eq!(vdaf.unshard(&leader, &helper, n).unwrap(), sum);

    // Zero noise changes nothing; negative noise comes back negative.
    let zeros = vec![0i128; vdaf.output_length()];
    let noised = vdaf.add_noise(&leader, &zeros).unwrap();
    assert_eq!(noised, leader);
    // Negative enough that every noised total is below zero.
    let noise: Vec<i128> = sum.iter().zip(0..).map(|(s, i)| -(s + 1_000 + i)).collect();
    let leader_noised = vdaf.add_noise(&leader, &noise).unwrap();
    let helper_noised = vdaf.add_noise(&helper, &noise).unwrap();
    let got = vdaf.unshard(&leader_noised, &helper_noised, n).unwrap();
    let want: Vec<i128> = sum.iter().zip(&noise).map(|(s, e)| s + 2 * e).collect();
    assert_eq!(got, want);
    assert!(got.iter().all(|v| *v < 0));

    // Merging per-half aggregates equals aggregating everything.
    let (half_l, half_h) = run(vdaf, &measurements[..1]);
    let (rest_l, rest_h) = run(vdaf, &measurements[1..]);
    let merged_l = vdaf.merge(&half_l, &rest_l).unwrap();
    let merged_h = vdaf.merge(&half_h, &rest_h).unwrap();
    assert_eq!(vdaf.unshard(&merged_l, &merged_h, n).unwrap(), sum);
}

#[test]
fn l1_bound_sum_round_trip() {
    let vdaf = Prio3Vdaf::l1_bound_sum(4, 4, 3).unwrap();
    round_trip(
        &vdaf,
        &[
            vec![15, 0, 0, 0],
            vec![0, 0, 0, 15],
            vec![0; 4],
            vec![1, 2, 3, 4],
            vec![0, 1, 0, 0],
        ],
    );
}

#[test]
fn sum_vec_round_trip() {
    let vdaf = Prio3Vdaf::sum_vec(5, 4, 4).unwrap();
    round_trip(
        &vdaf,
        &[
            vec![15, 15, 15, 15, 15],
            vec![0, 1, 2, 3, 4],
            vec![0; 5],
            vec![9, 0, 9, 0, 9],
        ],
    );
}

#[test]
fn histogram_round_trip() {
    let vdaf = Prio3Vdaf::histogram(6, 2).unwrap();
    round_trip(&vdaf, &[vec![0], vec![5], vec![2], vec![2], vec![3]]);
}

#[test]
fn wide_entries_round_trip() {
    let vdaf = Prio3Vdaf::sum_vec(2, 64, 16).unwrap();
    let max = u64::MAX as i128;
    round_trip(&vdaf, &[vec![max, 0], vec![max, 1], vec![1, max]]);
}

#[test]
fn empty_aggregate_is_zero() {
    let vdaf = Prio3Vdaf::sum_vec(3, 2, 2).unwrap();
    let none: [&[u8]; 0] = [];
    let zero = vdaf.aggregate(0, &none).unwrap();
    assert_eq!(zero.len(), 3 * 16);
    assert_eq!(vdaf.unshard(&zero, &zero, 0).unwrap(), vec![0, 0, 0]);
}

#[test]
fn signed_mapping_at_the_edges() {
    let p = Prio3Vdaf::field_modulus();
    let half = (p / 2) as i128;
    assert_eq!(to_signed(0), 0);
    assert_eq!(to_signed(p / 2), half);
    assert_eq!(to_signed(p / 2 + 1), -half);
    assert_eq!(to_signed(p - 1), -1);

    let vdaf = Prio3Vdaf::sum_vec(2, 1, 1).unwrap();
    let none: [&[u8]; 0] = [];
    let zero = vdaf.aggregate(0, &none).unwrap();
    let share = vdaf.add_noise(&zero, &[half, -half]).unwrap();
    assert_eq!(vdaf.unshard(&share, &zero, 0).unwrap(), vec![half, -half]);
    let err = vdaf.add_noise(&zero, &[half + 1, 0]).unwrap_err();
    assert!(
        matches!(err, Error::Parameter(ref m) if m.contains("noise[0]")),
        "{err:?}"
    );
    let err = vdaf.add_noise(&zero, &[0]).unwrap_err();
    assert!(
        matches!(err, Error::Parameter(ref m) if m.contains("1 values")),
        "{err:?}"
    );
}

#[test]
fn out_of_range_measurements_are_refused_at_shard() {
    let n = nonce(0);
    let l1 = Prio3Vdaf::l1_bound_sum(3, 4, 2).unwrap();
    let sum_vec = Prio3Vdaf::sum_vec(3, 4, 2).unwrap();
    let histogram = Prio3Vdaf::histogram(3, 2).unwrap();
    let cases: [(&Prio3Vdaf, &[i128], &str); 9] = [
        (&l1, &[8, 8, 0], "sum to 16"),
        (&l1, &[16, 0, 0], "measurement[0] = 16"),
        (&l1, &[0, -1, 0], "measurement[1] = -1"),
        (&l1, &[1, 2], "has 2 entries"),
        (
            &sum_vec,
            &[15, 16, 0],
            "measurement[1] = 16 is out of range [0, 15]",
        ),
        (&sum_vec, &[1, 2, 3, 4], "has 4 entries"),
        (&histogram, &[3], "bucket index 3"),
        (&histogram, &[-1], "bucket index -1"),
        (&histogram, &[0, 1], "got 2 values"),
    ];
    for (vdaf, m, needle) in cases {
        match vdaf.shard(CTX, m, &n) {
            Err(Error::Measurement(msg)) => assert!(msg.contains(needle), "{msg:?} / {needle:?}"),
            other => panic!("{m:?}: {other:?}"),
        }
    }
}

#[test]
fn bad_parameters_are_refused() {
    let refused = [
        Prio3Vdaf::sum_vec(0, 4, 1).err(),
        Prio3Vdaf::sum_vec(4, 0, 1).err(),
        Prio3Vdaf::sum_vec(4, 65, 1).err(),
        Prio3Vdaf::sum_vec(4, 4, 0).err(),
        Prio3Vdaf::sum_vec(4, 4, 17).err(),
        Prio3Vdaf::l1_bound_sum(-1, 4, 1).err(),
        Prio3Vdaf::l1_bound_sum(1 << 20, 64, 1).err(),
        Prio3Vdaf::histogram(0, 1).err(),
        Prio3Vdaf::histogram(4, 5).err(),
    ];
    for (i, err) in refused.into_iter().enumerate() {
        assert!(
            matches!(err, Some(Error::Parameter(_))),
            "case {i}: {err:?}"
        );
    }
    // The encoded length of l1_bound_sum counts the norm as one more entry.
    assert!(Prio3Vdaf::l1_bound_sum(2, 4, 12).is_ok());
}

#[test]
fn bad_sizes_and_ids_are_refused() {
    let vdaf = Prio3Vdaf::sum_vec(2, 2, 2).unwrap();
    let n = nonce(1);
    assert!(
        matches!(vdaf.shard(CTX, &[1, 1], &[0; 15]), Err(Error::Parameter(m)) if m.contains("nonce must be 16 bytes, got 15"))
    );
    let (public, leader, _) = vdaf.shard(CTX, &[1, 1], &n).unwrap();
    let r = vdaf.verify_init(&[0; 31], CTX, 0, &n, &public, &leader);
    assert!(
        matches!(r, Err(Error::Parameter(m)) if m.contains("verify_key must be 32 bytes, got 31"))
    );
    let r = vdaf.verify_init(&KEY, CTX, 2, &n, &public, &leader);
    assert!(
        matches!(r, Err(Error::Parameter(m)) if m.contains("agg_id must be 0 (leader) or 1 (helper), got 2"))
    );
    let r = vdaf.unshard(&[], &[], -1);
    assert!(matches!(r, Err(Error::Parameter(m)) if m.contains("num_measurements")));
}

#[test]
fn garbage_is_a_decode_error() {
    let vdaf = Prio3Vdaf::l1_bound_sum(3, 3, 2).unwrap();
    let n = nonce(2);
    let (public, leader, helper) = vdaf.shard(CTX, &[1, 2, 3], &n).unwrap();
    let garbage: [&[u8]; 4] = [b"", b"\x01", &[0xff; 16], &[0xff; 4096]];
    for g in garbage {
        let is_decode = |r: Result<Vec<u8>>| matches!(r, Err(Error::Decode(_)));
        assert!(matches!(
            vdaf.verify_init(&KEY, CTX, 0, &n, g, &leader),
            Err(Error::Decode(_))
        ));
        assert!(matches!(
            vdaf.verify_init(&KEY, CTX, 0, &n, &public, g),
            Err(Error::Decode(_))
        ));
        assert!(matches!(
            vdaf.verify_init(&KEY, CTX, 1, &n, &public, g),
            Err(Error::Decode(_))
        ));
        assert!(is_decode(vdaf.verifier_shares_to_message(CTX, g, g)));
        assert!(is_decode(vdaf.verify_next(CTX, 0, g, g)));
        assert!(is_decode(vdaf.verify_next(CTX, 1, g, g)));
        assert!(is_decode(vdaf.aggregate(0, &[g])));
        assert!(is_decode(vdaf.merge(g, g)));
        assert!(is_decode(vdaf.add_noise(g, &[0, 0, 0])));
        assert!(matches!(vdaf.unshard(g, g, 1), Err(Error::Decode(_))));
    }
    // A leader share handed over as the helper's does not decode either.
    assert!(matches!(
        vdaf.verify_init(&KEY, CTX, 1, &n, &public, &leader),
        Err(Error::Decode(_))
    ));
    assert!(matches!(
        vdaf.verify_init(&KEY, CTX, 0, &n, &public, &helper),
        Err(Error::Decode(_))
    ));
}

#[test]
fn tampered_leader_share_fails_verification() {
    for vdaf in [
        Prio3Vdaf::l1_bound_sum(4, 4, 3).unwrap(),
        Prio3Vdaf::sum_vec(4, 4, 3).unwrap(),
        Prio3Vdaf::histogram(4, 2).unwrap(),
    ] {
        let n = nonce(3);
        let measurement: &[i128] = if vdaf.kind() == Kind::Histogram {
            &[1]
        } else {
            &[1, 2, 3, 4]
        };
        let (public, mut leader, helper) = vdaf.shard(CTX, measurement, &n).unwrap();
        // Field elements are little-endian: flipping the low bit of a byte that starts an element
        // keeps it decodable (below p) and changes the measurement or proof share.
        for offset in [0, 16, leader.len() - 48] {
            leader[offset] ^= 1;
            let err =
                verify(&vdaf, &n, &(public.clone(), leader.clone(), helper.clone())).unwrap_err();
            assert!(
                matches!(err, Error::Verify(_)),
                "{}: {err:?}",
                vdaf.kind().name()
            );
            leader[offset] ^= 1;
        }
        // A different verify key on one side, or another nonce, is refused too.
        let (l_state, l_share) = vdaf
            .verify_init(&KEY, CTX, 0, &n, &public, &leader)
            .unwrap();
        let (_, h_share) = vdaf
            .verify_init(&[8; 32], CTX, 1, &n, &public, &helper)
            .unwrap();
        let err = vdaf
            .verifier_shares_to_message(CTX, &l_share, &h_share)
            .unwrap_err();
        assert!(matches!(err, Error::Verify(_)), "{err:?}");
        let (h_state, h_share) = vdaf
            .verify_init(&KEY, CTX, 1, &nonce(4), &public, &helper)
            .unwrap();
        let verdict = vdaf
            .verifier_shares_to_message(CTX, &l_share, &h_share)
            .and_then(|m| {
                vdaf.verify_next(CTX, 0, &l_state, &m)?;
                vdaf.verify_next(CTX, 1, &h_state, &m)
            });
        assert!(matches!(verdict, Err(Error::Verify(_))), "{verdict:?}");
    }
}

/// Shard `encoded` (a raw FLP encoding) as a malicious client would, bypassing shard's checks
/// (`shard_unchecked_for_tests`), then run the real verification on it.
fn verify_forged(vdaf: &Prio3Vdaf, encoded: &[u64]) -> Result<(Vec<u8>, Vec<u8>)> {
    let encoded: Vec<i128> = encoded.iter().map(|v| i128::from(*v)).collect();
    let n = nonce(9);
    let report = vdaf.shard_unchecked_for_tests(CTX, &encoded, &n)?;
    verify(vdaf, &n, &report)
}

#[test]
fn forged_over_bound_reports_fail_verification() {
    // L1BoundSum, 4 bits (max 15), 3 entries: each entry and the claimed norm are 4 bits, LSB
    // first. An honest [15, 0, 0] with norm 15 verifies; [15, 15, 0] claiming norm 15 passes
    // every per-entry range check but not the norm check.
    let l1 = Prio3Vdaf::l1_bound_sum(3, 4, 4).unwrap();
    let honest = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1];
    let forged = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1];
    let (leader, helper) = verify_forged(&l1, &honest).unwrap();
    let sum = l1.unshard(
        &l1.aggregate(0, &[leader]).unwrap(),
        &l1.aggregate(1, &[helper]).unwrap(),
        1,
    );
    assert_eq!(sum.unwrap(), vec![15, 0, 0]);
    let err = verify_forged(&l1, &forged).unwrap_err();
    assert!(
        matches!(err, Error::Verify(ref m) if m.contains("proof verifier check failed")),
        "{err:?}"
    );

    // SumVec, 4 bits, 2 entries: a "bit" of 3 in the top position decodes to 1 + 3 * 8 = 25.
    let sum_vec = Prio3Vdaf::sum_vec(2, 4, 3).unwrap();
    assert!(verify_forged(&sum_vec, &[1, 0, 0, 1, 0, 0, 0, 0]).is_ok());
    let err = verify_forged(&sum_vec, &[1, 0, 0, 3, 0, 0, 0, 0]).unwrap_err();
    assert!(matches!(err, Error::Verify(_)), "{err:?}");

    // Histogram: two buckets set at once.
    let histogram = Prio3Vdaf::histogram(4, 2).unwrap();
    assert!(verify_forged(&histogram, &[0, 1, 0, 0]).is_ok());
    let err = verify_forged(&histogram, &[0, 1, 1, 0]).unwrap_err();
    assert!(matches!(err, Error::Verify(_)), "{err:?}");
}
