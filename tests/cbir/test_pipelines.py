"""Named pipelines: build settings and default search options, saved and read back, format 1 converted."""
import dataclasses
import json
import os

import pytest

from cbir.pipelines import PIPELINES, Pipeline, check_search_options, get_pipeline, pipeline_from_format1
from index.asmk import AsmkConfig
from index.search_options import DiffusionConfig, SearchOptions

FORMAT1 = os.path.join(os.path.dirname(__file__), "..", "data", "format-v1")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipeline_survives_json(name):
    pipeline = PIPELINES[name]
    assert Pipeline.from_dict(json.loads(json.dumps(pipeline.to_dict()))) == pipeline


def test_pipelines_built_alike_share_their_build():
    assert get_pipeline("sift-bow").build == get_pipeline("sift-sv-qe").build
    assert get_pipeline("sift-he").build == get_pipeline("sift-he-sv-qe").build != get_pipeline("sift-bow").build
    assert get_pipeline("blcf").build == get_pipeline("blcf-ls").build
    assert get_pipeline("sift-asmk").build == get_pipeline("sift-asmk-sv").build != get_pipeline("sift-he").build
    assert get_pipeline("rmac").build != get_pipeline("rmac-rr").build  # rmac-rr keeps the regions


@pytest.mark.parametrize("name", ["sift-bow", "sift-he-sv", "rmac-rr"])
def test_format1_descriptions_convert_to_the_same_pipeline(name):
    manifest = json.load(open(os.path.join(FORMAT1, name, "manifest.json")))
    converted = pipeline_from_format1(manifest["meta"]["pipeline"], manifest["format"])
    expected = get_pipeline(name)
    assert converted.search == expected.search and converted.kind == expected.kind
    if converted.kind == "local":  # format 1 saved the pipeline's default vocabulary shape, not the tree's,
        assert converted.build.sift.max_features == 0  # and features without today's budget
        converted = dataclasses.replace(converted, build=dataclasses.replace(
            converted.build, vocabulary=expected.build.vocabulary, sift=expected.build.sift))
    assert converted.build == expected.build


def test_options_an_index_cannot_apply_are_named():
    local, conv, he = get_pipeline("sift-bow").build, get_pipeline("blcf").build, get_pipeline("sift-he").build
    with pytest.raises(ValueError, match="region re-ranking needs an R-MAC index"):
        check_search_options(local, SearchOptions(region_rerank=10))
    with pytest.raises(ValueError, match="Hamming matching settings are needed exactly"):
        check_search_options(he, SearchOptions())
    with pytest.raises(ValueError, match="window search needs every conv-map position of one grid"):
        check_search_options(local, SearchOptions(window_search=5))
    check_search_options(conv, SearchOptions(window_search=5))
    for selected in ({"max_features": 100}, {"scales": (1.0, 0.5)}):
        build = dataclasses.replace(conv, conv=dataclasses.replace(conv.conv, **selected))
        with pytest.raises(ValueError, match="window search needs every conv-map position of one grid"):
            check_search_options(build, SearchOptions(window_search=5))
    with pytest.raises(ValueError, match="unknown pipeline 'sift'"):
        get_pipeline("sift")
    expansion = get_pipeline("sift-sv-qe").search.expansion
    with pytest.raises(ValueError, match="query expansion on a local-feature index needs spatial verification"):
        check_search_options(local, SearchOptions(expansion=expansion))
    check_search_options(get_pipeline("gem").build, SearchOptions(expansion=expansion))
    with pytest.raises(ValueError, match="diffusion needs a global-descriptor index"):
        check_search_options(local, SearchOptions(diffusion=DiffusionConfig()))
    with pytest.raises(ValueError, match="regional diffusion needs an index that stores R-MAC regions"):
        check_search_options(get_pipeline("rmac").build, SearchOptions(diffusion=DiffusionConfig(regional=True)))
    check_search_options(get_pipeline("rmac-rr").build, SearchOptions(diffusion=DiffusionConfig(regional=True)))
    with pytest.raises(ValueError, match="alpha must lie in"):
        DiffusionConfig(alpha=1.0)


def test_asmk_settings_go_exactly_with_asmk_builds():
    asmk, he = get_pipeline("sift-asmk").build, get_pipeline("sift-he").build
    with pytest.raises(ValueError, match="ASMK\\* stores one signature per \\(image, word\\)"):
        dataclasses.replace(asmk, hamming=True)
    with pytest.raises(ValueError, match="ASMK\\* settings are needed exactly for ASMK\\* indexes"):
        check_search_options(asmk, SearchOptions(query_assignments=3))
    with pytest.raises(ValueError, match="ASMK\\* settings are needed exactly for ASMK\\* indexes"):
        check_search_options(get_pipeline("sift-bow").build, SearchOptions(asmk=AsmkConfig()))
    with pytest.raises(ValueError, match="Hamming matching settings are needed exactly"):
        check_search_options(he, dataclasses.replace(get_pipeline("sift-he").search, hamming=None,
                                                     asmk=AsmkConfig()))
    with pytest.raises(ValueError, match="query expansion is not implemented for ASMK\\* indexes"):
        check_search_options(asmk, dataclasses.replace(get_pipeline("sift-asmk-sv").search,
                                                       expansion=get_pipeline("sift-sv-qe").search.expansion))
    with pytest.raises(ValueError, match="ASMK\\* needs a local-feature index"):
        check_search_options(get_pipeline("gem").build, SearchOptions(asmk=AsmkConfig()))
    options = get_pipeline("sift-asmk-sv").search
    assert options.asmk == AsmkConfig() and options.verification is not None and options.query_assignments == 3
    assert SearchOptions.from_dict(options.to_dict()) == options
    old = {k: v for k, v in get_pipeline("sift-he").search.to_dict().items() if k != "asmk"}  # saved before ASMK*
    assert SearchOptions.from_dict(old) == get_pipeline("sift-he").search


def test_query_rotations_are_distinct_quarter_turns_and_not_verified():
    assert SearchOptions(query_rotations=[0, 90, 270]).query_rotations == (0, 90, 270)  # JSON gives lists
    for bad in ((), (0, 45), (90, 90), (360,)):
        with pytest.raises(ValueError, match="query rotations are distinct angles of 0, 90, 180, 270"):
            SearchOptions(query_rotations=bad)
    sv = get_pipeline("sift-he-sv")
    with pytest.raises(ValueError, match="query rotations do not combine with spatial verification"):
        check_search_options(sv.build, dataclasses.replace(sv.search, query_rotations=(0, 90)))
    check_search_options(get_pipeline("sift-he").build,
                         dataclasses.replace(get_pipeline("sift-he").search, query_rotations=(0, 90)))
    with pytest.raises(ValueError, match="query rotations are not implemented for fusion indexes"):
        check_search_options(get_pipeline("fusion").build,
                             dataclasses.replace(get_pipeline("fusion").search, query_rotations=(0, 90)))
    options = dataclasses.replace(get_pipeline("blcf-asmk").search, query_rotations=(0, 90, 270))
    assert SearchOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options


def test_rotations_are_refused_where_rankings_are_not_ordered_by_one_score():
    for name, setting in (("rmac-rr", {"region_rerank": 100}), ("rmac-diffusion", {})):
        pipeline = get_pipeline(name)
        options = dataclasses.replace(pipeline.search, query_rotations=(0, 90), **setting)
        with pytest.raises(ValueError, match="do not combine with region re-ranking or diffusion"):
            check_search_options(pipeline.build, options)
