-- school_club: students, the clubs they join (membership), and the teachers who advise the clubs.
-- Join paths: student -> membership -> club -> teacher.
CREATE TABLE teacher (
    teacher_id INTEGER PRIMARY KEY,
    name TEXT,
    subject TEXT,
    salary INTEGER
);
CREATE TABLE club (
    club_id INTEGER PRIMARY KEY,
    club_name TEXT,
    room TEXT,
    founded INTEGER,
    advisor_id INTEGER,
    FOREIGN KEY (advisor_id) REFERENCES teacher(teacher_id)
);
CREATE TABLE student (
    student_id INTEGER PRIMARY KEY,
    first_name TEXT,
    last_name TEXT,
    age INTEGER,
    grade INTEGER,
    city TEXT
);
CREATE TABLE membership (
    student_id INTEGER,
    club_id INTEGER,
    role TEXT,
    joined_year INTEGER,
    PRIMARY KEY (student_id, club_id),
    FOREIGN KEY (student_id) REFERENCES student(student_id),
    FOREIGN KEY (club_id) REFERENCES club(club_id)
);

-- Jack Kim advises no club (for NOT IN questions).
INSERT INTO teacher VALUES
 (1, 'Ada Moore', 'Math', 52000),
 (2, 'Ben Clark', 'Music', 47000),
 (3, 'Cora Diaz', 'Biology', 50500),
 (4, 'Dan Evans', 'History', 45000),
 (5, 'Eva Ford', 'Art', 46000),
 (6, 'Finn Gray', 'Physics', 56000),
 (7, 'Gail Hart', 'Music', 44500),
 (8, 'Hank Ives', 'Chemistry', 54000),
 (9, 'Iris Jones', 'English', 48000),
 (10, 'Jack Kim', 'Math', 51000);

INSERT INTO club VALUES
 (1, 'Chess', 'R101', 1998, 1),
 (2, 'Choir', 'R202', 2005, 2),
 (3, 'Robotics', 'R303', 2012, 6),
 (4, 'Drama', 'R104', 2001, 5),
 (5, 'Debate', 'R105', 2010, 4),
 (6, 'Garden', 'R106', 2018, 3),
 (7, 'Jazz Band', 'R202', 2015, 7),
 (8, 'Science Olympiad', 'R305', 2016, 8),
 (9, 'Book Club', 'R110', 2008, 9),
 (10, 'Photography', 'R107', 2020, 5);

-- Grade sizes differ (8: 1, 9: 4, 10: 5, 11: 6, 12: 4) so that HAVING filters something.
INSERT INTO student VALUES
 (1, 'Liam', 'Nash', 15, 10, 'Boston'),
 (2, 'Mia', 'Owen', 16, 11, 'Salem'),
 (3, 'Noah', 'Park', 14, 9, 'Boston'),
 (4, 'Olivia', 'Quinn', 17, 12, 'Lowell'),
 (5, 'Pia', 'Reed', 15, 10, 'Salem'),
 (6, 'Quentin', 'Shaw', 16, 11, 'Boston'),
 (7, 'Rosa', 'Tate', 17, 12, 'Quincy'),
 (8, 'Sam', 'Underwood', 14, 9, 'Lowell'),
 (9, 'Tara', 'Vance', 17, 11, 'Boston'),
 (10, 'Uma', 'White', 15, 10, 'Quincy'),
 (11, 'Victor', 'Young', 17, 12, 'Salem'),
 (12, 'Wendy', 'Zane', 14, 9, 'Boston'),
 (13, 'Xavier', 'Abbot', 16, 11, 'Lowell'),
 (14, 'Yara', 'Bell', 15, 10, 'Quincy'),
 (15, 'Zoe', 'Carter', 18, 12, 'Boston'),
 (16, 'Aaron', 'Diaz', 14, 9, 'Salem'),
 (17, 'Bella', 'Evans', 16, 11, 'Worcester'),
 (18, 'Caleb', 'Foster', 15, 10, 'Lowell'),
 (19, 'Daisy', 'Wong', 16, 11, 'Worcester'),
 (20, 'Ethan', 'Grant', 13, 8, 'Quincy');

-- Students 13, 14, 16, 18 and 20 belong to no club.
INSERT INTO membership VALUES
 (1, 1, 'member', 2022),
 (1, 3, 'captain', 2021),
 (1, 5, 'member', 2023),
 (2, 2, 'member', 2023),
 (2, 4, 'member', 2022),
 (3, 1, 'member', 2023),
 (3, 3, 'member', 2023),
 (4, 5, 'captain', 2020),
 (4, 2, 'member', 2021),
 (4, 9, 'member', 2022),
 (5, 6, 'member', 2022),
 (5, 10, 'member', 2023),
 (6, 3, 'member', 2022),
 (6, 1, 'captain', 2021),
 (6, 8, 'member', 2022),
 (7, 4, 'captain', 2020),
 (7, 7, 'member', 2022),
 (8, 6, 'member', 2023),
 (9, 2, 'captain', 2021),
 (9, 7, 'member', 2023),
 (10, 5, 'member', 2022),
 (10, 9, 'captain', 2021),
 (11, 1, 'member', 2020),
 (11, 5, 'member', 2021),
 (12, 3, 'member', 2023),
 (15, 8, 'captain', 2020),
 (15, 3, 'member', 2021),
 (17, 4, 'member', 2022),
 (17, 10, 'captain', 2022),
 (19, 9, 'member', 2021);
