"""Writes nmoe's eval fixture task files (test/fixtures/eval/), one small file per task in the Hugging Face
layout and schema of the real dataset, with items composed here from templates: arithmetic, made-up facts about
fictional places and everyday physical situations. They exercise the adapters and scoring; they measure nothing.
Deterministic: `python3 tools/make-eval-fixtures.py` rewrites the same files."""
import json
import os
import random

ROOT = os.path.join(os.path.dirname(__file__), '..', 'test', 'fixtures', 'eval')
rng = random.Random(15)
N = 24
LETTERS = 'ABCDEFGHIJ'
TOWNS = ['Varden', 'Oskel', 'Mirrow', 'Tallin Creek', 'Bruma', 'Quessy', 'Halden Moor', 'Pike Hollow', 'Fennick', 'Lowmarsh', 'Arreth', 'Cindervale']
GOODS = ['copper pots', 'wool blankets', 'glass beads', 'salted fish', 'oak barrels', 'river clay', 'paper lanterns', 'tin whistles']
COLOURS = ['red', 'blue', 'green', 'yellow', 'white', 'black', 'orange', 'purple']


def write(path, rows):
    full = os.path.join(ROOT, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'w', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + '\n')


def arithmetic(i):
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    op = i % 3
    q, ans = [(f'What is {a} + {b}?', a + b), (f'What is {a + b} - {b}?', a), (f'What is {a % 12 + 2} times {b % 9 + 2}?', (a % 12 + 2) * (b % 9 + 2))][op]
    return q, ans


def distractors(ans, n):
    out = set()
    while len(out) < n:
        d = ans + rng.choice([-1, 1]) * rng.randint(1, 9)
        if d != ans and d >= 0:
            out.add(d)
    return list(out)


def fact(i):
    town = TOWNS[i % len(TOWNS)]
    good = GOODS[(i * 3) % len(GOODS)]
    return town, good, f'The market of {town} is known for its {good}. Traders come every spring to buy them.'


def mmlu():
    rows = []
    for i in range(N):
        q, ans = arithmetic(i)
        choices = distractors(ans, 3) + [ans]
        rng.shuffle(choices)
        rows.append({'question': q, 'subject': 'elementary_mathematics', 'choices': [str(c) for c in choices], 'answer': choices.index(ans)})
    write('cais/mmlu/all/dev-00000-of-00001.jsonl', rows)


def mmlu_pro():
    rows = []
    for i in range(N):
        q, ans = arithmetic(i + 100)
        opts = distractors(ans, 9) + [ans]
        rng.shuffle(opts)
        k = opts.index(ans)
        rows.append({'question_id': i, 'question': q, 'options': [str(o) for o in opts], 'answer': LETTERS[k], 'answer_index': k, 'cot_content': '', 'category': 'math', 'src': 'nmoe-fixture'})
    write('TIGER-Lab/MMLU-Pro/data/test-00000-of-00001.jsonl', rows)


def arc(subset, numeric_labels):
    rows = []
    for i in range(N):
        town, good, _ = fact(i + (0 if subset == 'ARC-Easy' else 5))
        wrong = rng.sample([g for g in GOODS if g != good], 3)
        texts = wrong + [good]
        rng.shuffle(texts)
        labels = [str(j + 1) for j in range(4)] if numeric_labels and i % 4 == 0 else list('ABCD')
        rows.append({'id': f'{subset}-{i}', 'question': f'Traders travel to {town} in spring. Which goods do they most likely buy there if {town} is known for {good}?',
                     'choices': {'text': texts, 'label': labels}, 'answerKey': labels[texts.index(good)]})
    write(f'allenai/ai2_arc/{subset}/test-00000-of-00001.jsonl', rows)


def hellaswag():
    rows = []
    acts = [('Baking bread', 'A man kneads a ball of dough on a floured table.', 'he', 'shapes it into a loaf and puts it in the oven.'),
            ('Painting a fence', 'A woman dips a wide brush into a can of white paint.', 'she', 'sweeps it along the wooden boards of the fence.'),
            ('Washing a dog', 'A boy lifts a muddy dog into a tub of warm water.', 'he', 'rubs soap into its fur and rinses it off.'),
            ('Tying shoelaces', 'A girl sits on the steps and pulls her laces tight.', 'she', 'loops them into a bow and stands up.')]
    wrong = ['flies up to the ceiling and sings.', 'eats the table in one bite.', 'turns into a bicycle and rolls away.', 'reads the newspaper to the moon.', 'paints the sky green with a spoon.']
    for i in range(N):
        label, a, b, right = acts[i % len(acts)]
        endings = rng.sample(wrong, 3) + [right]
        rng.shuffle(endings)
        rows.append({'ind': i, 'activity_label': label, 'ctx_a': a, 'ctx_b': b, 'ctx': f'{a} {b}', 'endings': endings, 'source_id': 'nmoe-fixture', 'split': 'val', 'split_type': 'indomain', 'label': str(endings.index(right))})
    write('Rowan/hellaswag/data/validation-00000-of-00001.jsonl', rows)


def openbookqa():
    rows = []
    for i in range(N):
        c = COLOURS[i % len(COLOURS)]
        texts = rng.sample([x for x in COLOURS if x != c], 3) + [c]
        rng.shuffle(texts)
        rows.append({'id': f'obqa-{i}', 'question_stem': f'A lamp with a {c} glass shade is lit in a dark room. What colour does the light on the wall look?',
                     'choices': {'text': texts, 'label': list('ABCD')}, 'answerKey': 'ABCD'[texts.index(c)]})
    write('allenai/openbookqa/main/test-00000-of-00001.jsonl', rows)


def winogrande():
    rows = []
    pairs = [('the suitcase', 'the wallet', 'was too big to fit in', 1), ('the river', 'the puddle', 'was too wide to jump over, unlike', 1), ('the kettle', 'the cup', 'could hold more water than', 1)]
    for i in range(N):
        x, y, rel, _ = pairs[i % len(pairs)]
        swap = i % 2 == 1
        o1, o2 = (y, x) if swap else (x, y)
        rows.append({'sentence': f'Because _ {rel} the other one, it was left behind.' if i % 3 else f'The tailor said that _ {rel} the box.', 'option1': o1, 'option2': o2, 'answer': '2' if swap else '1'})
    write('allenai/winogrande/winogrande_debiased/validation-00000-of-00001.jsonl', rows)


def boolq():
    rows = []
    for i in range(N):
        town, good, passage = fact(i)
        asked = good if i % 2 == 0 else GOODS[(i * 3 + 1) % len(GOODS)]
        rows.append({'question': f'is {town} known for its {asked}', 'answer': asked == good, 'passage': passage})
    write('google/boolq/data/validation-00000-of-00001.jsonl', rows)


def copa():
    rows = []
    items = [('The floor was wet.', 'Someone spilled a bucket of water.', 'The sun rose early.', 'cause'),
             ('The glass fell off the table.', 'It shattered on the tiles.', 'It turned into a bird.', 'effect'),
             ('The candle went out.', 'A gust of wind blew through the window.', 'The cat purred loudly.', 'cause'),
             ('She forgot her umbrella.', 'She got wet in the rain.', 'She grew taller.', 'effect')]
    for i in range(N):
        p, right, wrong, q = items[i % len(items)]
        flip = (i // 4) % 2 == 1
        rows.append({'premise': p, 'choice1': wrong if flip else right, 'choice2': right if flip else wrong, 'question': q, 'idx': i, 'label': 1 if flip else 0})
    write('super_glue/copa/validation-00000-of-00001.jsonl', rows)


def piqa():
    rows = []
    goals = [('keep bread fresh', 'Wrap it in a cloth and store it in a bread box.', 'Leave it in a bowl of water overnight.'),
             ('open a stuck jar lid', 'Run the lid under hot water, then twist it.', 'Freeze the jar and hit it with a hammer.'),
             ('dry wet shoes', 'Stuff them with newspaper and leave them in a warm room.', 'Put them in the fridge.')]
    for i in range(N):
        g, good, bad = goals[i % len(goals)]
        flip = i % 2 == 1
        rows.append({'goal': g, 'sol1': bad if flip else good, 'sol2': good if flip else bad, 'label': 1 if flip else 0})
    write('ybisk/piqa/validation-00000-of-00001.jsonl', rows)


def gsm8k():
    rows = []
    for i in range(N):
        a, b, c = rng.randint(3, 30), rng.randint(2, 9), rng.randint(1, 20)
        total = a * b + c
        town = TOWNS[i % len(TOWNS)]
        q = f'A stall in {town} sells {b} baskets of {a} apples each and {c} loose apples. How many apples does the stall sell?'
        ans = f'The baskets hold {b} * {a} = <<{b}*{a}={a * b}>>{a * b} apples.\nWith the loose ones that is {a * b} + {c} = <<{a * b}+{c}={total}>>{total} apples.\n#### {total:,}'
        rows.append({'question': q, 'answer': ans})
    # One answer of 42, which the hand-set model in test/eval.test.ts writes.
    rows[3] = {'question': 'A crate holds 6 rows of 7 jars. How many jars does it hold?', 'answer': 'It holds 6 * 7 = <<6*7=42>>42 jars.\n#### 42'}
    write('openai/gsm8k/main/test-00000-of-00001.jsonl', rows)


def humaneval():
    """Small functions in openai_humaneval's schema: a signature and docstring to complete, a reference body and a
    check(candidate) of asserts. The first is a one-line lambda whose right body is " 42", which the hand-set
    bigram model in test/eval.test.ts writes."""
    problems = [
        ('answer', 'answer = lambda:', ' 42', 'assert candidate() == 42'),
        ('double', 'def double(x):\n    """Return twice x."""\n', '    return 2 * x\n', 'assert candidate(3) == 6\n    assert candidate(-4) == -8'),
        ('shout', 'def shout(s):\n    """Return s in capitals, ending with an exclamation mark."""\n', "    return s.upper() + '!'\n",
         "assert candidate('hi') == 'HI!'\n    assert candidate('') == '!'"),
        ('count_vowels', 'def count_vowels(s):\n    """Return how many of the characters of s are vowels (a, e, i, o, u; any case)."""\n',
         "    return sum(c in 'aeiouAEIOU' for c in s)\n", "assert candidate('Banana') == 3\n    assert candidate('xyz') == 0"),
        ('is_sorted', 'def is_sorted(xs):\n    """Return True when the list xs never decreases."""\n', '    return all(a <= b for a, b in zip(xs, xs[1:]))\n',
         'assert candidate([1, 2, 2, 5])\n    assert not candidate([3, 1])\n    assert candidate([])'),
        ('town_of', 'def town_of(i):\n    """Return the i-th of the towns Varden, Oskel and Mirrow, counting from 0 and wrapping around."""\n',
         "    return ['Varden', 'Oskel', 'Mirrow'][i % 3]\n", "assert candidate(0) == 'Varden'\n    assert candidate(4) == 'Oskel'"),
    ]
    rows = [{'task_id': f'Fixture/{i}', 'prompt': prompt, 'canonical_solution': body, 'test': f'def check(candidate):\n    {asserts}\n', 'entry_point': name}
            for i, (name, prompt, body, asserts) in enumerate(problems)]
    write('openai/openai_humaneval/openai_humaneval/test-00000-of-00001.jsonl', rows)


for make in [mmlu, mmlu_pro, lambda: arc('ARC-Easy', False), lambda: arc('ARC-Challenge', True), hellaswag, openbookqa, winogrande, boolq, copa, piqa, gsm8k, humaneval]:
    make()
