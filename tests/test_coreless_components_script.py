"""benchmarks/coreless_components.py: its cache never hands one bundle's or one folder's predictions to another."""

from conftest import benchmark_script


def test_cached_predictions_are_kept_apart_by_bundle_precision_and_folder(tmp_path):
    script = benchmark_script("coreless_components")
    bundles = []
    for name in ("shipped", "candidate"):
        bundle = tmp_path / name
        bundle.mkdir()
        (bundle / "manifest.json").write_text(f'{{"weights": "{name}"}}')
        bundles.append(bundle)
    cache, cases = tmp_path / "cache", tmp_path / "a" / "blind"
    where = script.cache_folder(cache, cases, bundles[0], None)
    assert where == script.cache_folder(cache, cases, bundles[0], None)  # stable: a second run reuses it
    assert where != script.cache_folder(cache, cases, bundles[1], None)  # another bundle computes its own
    assert where != script.cache_folder(cache, cases, bundles[0], "fp32")  # another precision too
    assert where != script.cache_folder(cache, tmp_path / "b" / "blind", bundles[0], None)  # same name, other folder
