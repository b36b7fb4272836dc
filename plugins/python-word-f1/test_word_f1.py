"""Native tests of word_f1 against hand-computed F1 values: python3 -m unittest -v"""

import unittest

from word_f1 import f1, parse_config, score_group, tokens


class WordF1Test(unittest.TestCase):
    def test_tokens(self):
        self.assertEqual(tokens("The cat, the HAT!"), ["the", "cat", "the", "hat"])
        # Tibetan: the tsheg (U+0F0B) and shad (U+0F0D) separate syllables.
        self.assertEqual(tokens("བཀྲ་ཤིས་བདེ་ལེགས།"), ["བཀྲ", "ཤིས", "བདེ", "ལེགས"])
        self.assertEqual(tokens("你好，世界", unit="chars"), ["你", "好", "世", "界"])
        self.assertEqual(tokens("A b", lowercase=False), ["A", "b"])

    def test_f1_hand_computed(self):
        # pred: the cat sat (3), ref: the cat is here (4); overlap 2 → P = 2/3, R = 1/2, F1 = 4/7.
        self.assertAlmostEqual(f1(["the", "cat", "sat"], ["the", "cat", "is", "here"]), 4 / 7)
        # Repeated tokens count with multiplicity: pred a a a, ref a b → overlap 1, P = 1/3, R = 1/2, F1 = 0.4.
        self.assertAlmostEqual(f1(["a", "a", "a"], ["a", "b"]), 0.4)
        self.assertEqual(f1([], []), 1.0)
        self.assertEqual(f1(["x"], []), 0.0)
        self.assertEqual(f1(["x"], ["y"]), 0.0)

    def test_group_and_config(self):
        cfg = parse_config("")
        self.assertEqual(cfg, {"unit": "words", "lowercase": True})
        got = score_group(cfg, ["The cat sat.", "no ref"], ["the cat is here", None])
        self.assertAlmostEqual(got[0], 4 / 7)
        self.assertIsNone(got[1])
        chars = parse_config('{"unit": "chars"}')
        self.assertAlmostEqual(score_group(chars, ["你好"], ["你们好"])[0], 2 * (1.0 * 2 / 3) / (1 + 2 / 3))
        for bad in ('{"unit": "bytes"}', '{"lowercase": 1}', '{"unti": "words"}', "[1]"):
            with self.assertRaises(ValueError):
                parse_config(bad)


if __name__ == "__main__":
    unittest.main()
