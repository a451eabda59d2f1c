//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1e3`), parsed far
//! enough to refuse what the API server would and to compare a request with
//! its limit. k8s-openapi's `Quantity` is only a string.

/// The value of a quantity, or what is wrong with it.
pub(super) fn parse(text: &str) -> Result<f64, String> {
    const EXPECTED: &str = "it is not a Kubernetes quantity (a number with an optional suffix: m, k, M, G, Ki, Mi, Gi, ...)";
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let digits = number.strip_prefix('+').unwrap_or(number);
    let well_formed = !digits.is_empty()
        && digits != "."
        && digits.matches('.').count() <= 1
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !well_formed {
        return Err(EXPECTED.to_owned());
    }
    let value: f64 = digits.parse().map_err(|_| EXPECTED.to_owned())?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().map_err(|_| EXPECTED.to_owned())?;
            10f64.powi(power)
        }
        _ => return Err(EXPECTED.to_owned()),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_what_kubernetes_accepts() {
        assert_eq!(parse("100m"), Ok(0.1));
        assert_eq!(parse("1"), Ok(1.0));
        assert_eq!(parse("0.5"), Ok(0.5));
        assert_eq!(parse("64Mi"), Ok(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1G"), Ok(1e9));
        assert_eq!(parse("1e3"), Ok(1000.0));
        assert_eq!(parse("+2"), Ok(2.0));
        assert_eq!(parse(".5"), Ok(0.5));
    }

    #[test]
    fn refuses_the_rest() {
        for bad in ["", "lots", "-1", "1.2.3", "10mb", "1 Gi", "Mi", ".", "1e"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
