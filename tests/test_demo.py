"""`rtchunk demo` is `rtchunk reproduce` on one level with its own presets: what the presets promise (a failing
PPO seed never leaves a mixture of one expert; d = 0..4). The command itself runs end to end in
tests/test_kinetix_reproduce.py, on the toy-size reproduction run that the demo's smoke preset shares."""


from rtchunk.commands import demo, reproduce


def test_the_cpu_preset_survives_a_failing_seed_and_sweeps_d_0_to_4():
    config = demo.PRESETS[demo.DEFAULT_PRESET]
    assert len(config.levels) == 1
    assert config.min_experts >= 2  # never a mixture of one expert
    assert config.extra_seed_rounds >= 1  # a failing seed: more seeds, before the level would be given up
    assert config.experts.num_seeds % 2 == 0  # the learners split over both CPU devices
    assert config.experts.compact_obs and config.shrink  # exactly the full-layout experts, twice as fast
    assert tuple(config.eval.delays) == (0, 1, 2, 3, 4) and config.eval.num_envs >= 128
    assert {"naive", "rtc"} <= set(config.eval.methods)
    if config.fine_tunes:  # training-time RTC trains as many epochs in all as the BC policy it is compared with
        assert config.finetune.init_epoch + 1 + config.finetune.num_epochs == config.bc.num_epochs
    assert config.experts.stop_at_solve_rate == config.threshold
    assert config.bc.ema_decay  # the last weights are a lottery at this scale
    assert demo.PRESETS["smoke"] == reproduce.PRESETS["smoke"]
